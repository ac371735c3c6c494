package chat

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gemmoe/gemmoe/tokenizer"
)

var testdataDir = filepath.Join("..", "..", "testdata")

// goldenChat is one entry of gemma4-chat.json: the input of transformers'
// apply_chat_template, the string Gemma 4's official template renders and
// its ids under the Gemma-4-style tokenizer.
type goldenChat struct {
	Name     string  `json:"name"`
	Input    Request `json:"input"`
	Rendered string  `json:"rendered"`
	IDs      []int32 `json:"ids"`
}

func loadGoldenChats(t *testing.T) []goldenChat {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testdataDir, "chat", "gemma4-chat.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g []goldenChat
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if len(g) == 0 {
		t.Fatal("no golden chats")
	}
	return g
}

var (
	tokOnce sync.Once
	tok     *tokenizer.Tokenizer
	tokErr  error
)

func gemma4Tokenizer(t *testing.T) *tokenizer.Tokenizer {
	t.Helper()
	tokOnce.Do(func() {
		tok, tokErr = tokenizer.Load(filepath.Join(testdataDir, "tokenizer", "gemma4style-tokenizer.json.gz"))
	})
	if tokErr != nil {
		t.Fatal(tokErr)
	}
	return tok
}

func TestGemma4Golden(t *testing.T) {
	tk := gemma4Tokenizer(t)
	for _, g := range loadGoldenChats(t) {
		t.Run(g.Name, func(t *testing.T) {
			got, err := RenderGemma4(&g.Input)
			if err != nil {
				t.Fatal(err)
			}
			if got != g.Rendered {
				t.Fatalf("rendered\n got %q\nwant %q", got, g.Rendered)
			}
			// The rendering starts with <bos>; it is tokenized as is.
			if ids := tk.Encode(got, false); !slices.Equal(ids, g.IDs) {
				t.Errorf("ids\n got %v\nwant %v", ids, g.IDs)
			}
		})
	}
}

// TestGemma4GoldenRoundTrip re-encodes each golden input through the Go
// types (as a Go caller would build it) and renders it again.
func TestGemma4GoldenRoundTrip(t *testing.T) {
	for _, g := range loadGoldenChats(t) {
		data, err := json.Marshal(&g.Input)
		if err != nil {
			t.Fatal(err)
		}
		var r Request
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		got, err := RenderGemma4(&r)
		if err != nil || got != g.Rendered {
			t.Errorf("%s: after a JSON round trip got %q, %v", g.Name, got, err)
		}
	}
}

func TestGemma4Cases(t *testing.T) {
	weather := Tool{Type: "function", Function: Function{
		Name: "get_weather", Description: "Current weather for a city.",
		Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string","description":"City name"}},"required":["city"]}`),
	}}
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{
			name: "content parts and developer role",
			req: Request{Messages: []Message{
				{Role: "developer", Content: Text("Be brief.")},
				{Role: "user", Content: Parts(Part{Type: "text", Text: " Look "}, Part{Type: "image"}, Part{Type: "text", Text: "here"})},
			}, AddGenerationPrompt: true, EnableThinking: true},
			want: "<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nLook\n\n<|image|>\n\nhere<turn|>\n<|turn>model\n",
		},
		{
			name: "arguments as a JSON string are rendered verbatim",
			req: Request{Messages: []Message{
				{Role: "user", Content: Text("Weather?")},
				{Role: "assistant", ToolCalls: []ToolCall{{Type: "function", Function: FunctionCall{Name: "get_weather", Arguments: json.RawMessage(`"city:<|\"|>Oslo<|\"|>"`)}}}},
			}, Tools: []Tool{weather}},
			want: "<bos><|turn>system\n<|tool>declaration:get_weather{description:<|\"|>Current weather for a city.<|\"|>,parameters:{properties:{city:{description:<|\"|>City name<|\"|>,type:<|\"|>STRING<|\"|>}},required:[<|\"|>city<|\"|>],type:<|\"|>OBJECT<|\"|>}}<tool|><turn|>\n" +
				"<|turn>user\nWeather?<turn|>\n<|turn>model\n<|tool_call>call:get_weather{city:<|\"|>Oslo<|\"|>}<tool_call|><turn|>\n",
		},
		{
			name: "argument values: nested objects, lists, numbers, booleans, null",
			req: Request{Messages: []Message{
				{Role: "assistant", ToolCalls: []ToolCall{{Function: FunctionCall{Name: "f", Arguments: json.RawMessage(
					`{"b":[1,2.5,1e-7,true,null],"A":{"y":"s","X":false},"c":100000000000000000000}`)}}}},
			}},
			want: "<bos><|turn>model\n<|tool_call>call:f{A:{X:false,y:<|\"|>s<|\"|>},b:[1,2.5,1e-07,true,None],c:100000000000000000000}<tool_call|><turn|>\n",
		},
		{
			name: "non-object tool response and a tool message with content",
			req: Request{Messages: []Message{
				{Role: "tool", ToolResponses: []ToolResponse{{Name: "f", Response: json.RawMessage(`[1,"a"]`)}}, Content: Text("done")},
			}, AddGenerationPrompt: true},
			want: "<bos><|turn>tool\n<|tool_response>response:f{value:[1,<|\"|>a<|\"|>]}<tool_response|>done<turn|>\n<|channel>thought\n<channel|>",
		},
		{
			name: "nested object and array parameters",
			req: Request{Messages: []Message{{Role: "user", Content: Text("x")}}, Tools: []Tool{{Type: "function", Function: Function{
				Name: "g", Description: "D",
				Parameters: json.RawMessage(`{"type":"object","properties":{
					"opts":{"type":"object","description":"O","properties":{"n":{"type":"integer","nullable":true}},"required":["n"]},
					"tags":{"type":"array","items":{"type":"string","enum":["a"]}},
					"type":{"type":"string"}}}`),
				Response: json.RawMessage(`{"type":"object","description":"R"}`),
			}}}},
			want: "<bos><|turn>system\n<|tool>declaration:g{description:<|\"|>D<|\"|>,parameters:{properties:{" +
				"opts:{description:<|\"|>O<|\"|>,properties:{n:{nullable:true,type:<|\"|>INTEGER<|\"|>}},required:[<|\"|>n<|\"|>],type:<|\"|>OBJECT<|\"|>}," +
				"tags:{,items:{enum:[<|\"|>a<|\"|>],type:<|\"|>STRING<|\"|>}type:<|\"|>ARRAY<|\"|>}},type:<|\"|>OBJECT<|\"|>}" +
				",response:{description:<|\"|>R<|\"|>,type:<|\"|>OBJECT<|\"|>}}<tool|><turn|>\n<|turn>user\nx<turn|>\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderGemma4(&tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestGemma4Errors(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"no messages", Request{}, "no messages"},
		{"bad arguments", Request{Messages: []Message{{Role: "assistant", ToolCalls: []ToolCall{{Function: FunctionCall{Name: "f", Arguments: json.RawMessage(`{"a":`)}}}}}}, "arguments"},
		{"bad response", Request{Messages: []Message{{Role: "tool", ToolResponses: []ToolResponse{{Name: "f", Response: json.RawMessage(`{1}`)}}}}}, "response"},
		{"bad parameters", Request{Messages: []Message{{Role: "user", Content: Text("x")}}, Tools: []Tool{{Function: Function{Name: "f", Parameters: json.RawMessage(`[`)}}}}, "parameters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RenderGemma4(&tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// TestGemma3 checks against strings written out by hand from Gemma 3's
// template (google/gemma-3-*-it tokenizer_config.json chat_template).
func TestGemma3(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{
			name: "single user with generation prompt",
			req:  Request{Messages: []Message{{Role: "user", Content: Text("Hello!")}}, AddGenerationPrompt: true},
			want: "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
		},
		{
			name: "system folded into the first user turn, untrimmed",
			req: Request{Messages: []Message{
				{Role: "system", Content: Text("You are terse. ")},
				{Role: "user", Content: Text("  What is Go?\n")},
			}, AddGenerationPrompt: true},
			want: "<bos><start_of_turn>user\nYou are terse. \n\nWhat is Go?<end_of_turn>\n<start_of_turn>model\n",
		},
		{
			name: "multi-turn without generation prompt",
			req: Request{Messages: []Message{
				{Role: "user", Content: Text("Hi")},
				{Role: "assistant", Content: Text("Hello! How can I help?")},
				{Role: "user", Content: Text("Tell me a joke.")},
				{Role: "assistant", Content: Text(" Why? ")},
			}},
			want: "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n" +
				"<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\nWhy?<end_of_turn>\n",
		},
		{
			name: "parts: system takes its first text part, images become <start_of_image>",
			req: Request{Messages: []Message{
				{Role: "system", Content: Parts(Part{Type: "text", Text: "Sys"}, Part{Type: "text", Text: "ignored"})},
				{Role: "user", Content: Parts(Part{Type: "image"}, Part{Type: "text", Text: " Describe. "})},
			}, AddGenerationPrompt: true},
			want: "<bos><start_of_turn>user\nSys\n\n<start_of_image>Describe.<end_of_turn>\n<start_of_turn>model\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderGemma3(&tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestGemma3Errors(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"no messages", Request{}, "no messages"},
		{"roles do not alternate", Request{Messages: []Message{{Role: "user", Content: Text("a")}, {Role: "user", Content: Text("b")}}}, "alternate"},
		{"assistant first", Request{Messages: []Message{{Role: "assistant", Content: Text("a")}}}, "alternate"},
		{"missing content", Request{Messages: []Message{{Role: "user"}}}, "invalid content"},
		{"tools", Request{Messages: []Message{{Role: "user", Content: Text("a")}}, Tools: []Tool{{}}}, "tool"},
		{"thinking", Request{Messages: []Message{{Role: "user", Content: Text("a")}}, EnableThinking: true}, "thinking"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RenderGemma3(&tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestContentJSON(t *testing.T) {
	for _, in := range []string{`"hi"`, `[{"type":"text","text":"hi"}]`, `null`, `[]`} {
		var c Content
		if err := json.Unmarshal([]byte(in), &c); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out, err := json.Marshal(c)
		if err != nil || string(out) != in {
			t.Errorf("%s: round trip gave %s, %v", in, out, err)
		}
	}
	var c Content
	if err := json.Unmarshal([]byte(`42`), &c); err == nil {
		t.Error("content 42: no error")
	}
}

func TestPyFloat(t *testing.T) {
	for in, want := range map[string]string{
		"1.0": "1.0", "2.5": "2.5", "1e-7": "1e-07", "1e16": "1e+16", "1.5e16": "1.5e+16",
		"123456789012345.0": "123456789012345.0", "0.0001": "0.0001", "0.00001": "1e-05", "-0.0": "-0.0",
		"1E2": "100.0", "-0": "0", "7": "7",
	} {
		if got := pyNumber(in); got != want {
			t.Errorf("pyNumber(%s) = %s, want %s", in, got, want)
		}
	}
}
