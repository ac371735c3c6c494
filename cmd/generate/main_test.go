package main

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/gemmoe/gemmoe"
	fixturedata "github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const fixture = "../../testdata/tiny-moe-4bit"

func runCLI(t *testing.T, f flags, stdin string) (string, error) {
	t.Helper()
	var out, log bytes.Buffer
	if f.backend == "" {
		f.backend = "cpu"
	}
	err := run(context.Background(), f, strings.NewReader(stdin), &out, &log)
	return out.String(), err
}

// TestScoreMatchesReference: -score's NLLs equal -log softmax of the
// transformers reference logits at the next token.
func TestScoreMatchesReference(t *testing.T) {
	ref, err := fixturedata.Load(filepath.Base(fixture))
	if err != nil {
		t.Fatal(err)
	}
	idv := ref.InputIDs
	var ids []string
	for _, id := range idv {
		ids = append(ids, strconv.Itoa(int(id)))
	}
	out, err := runCLI(t, flags{model: fixture, tokens: strings.Join(ids, ","), score: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		NLL  []float64 `json:"nll"`
		Top1 []int32   `json:"top1"`
		PPL  float64   `json:"ppl"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	V := ref.Vocab
	var sum float64
	for i := 0; i+1 < len(idv); i++ {
		row := make([]float64, V)
		mx := math.Inf(-1)
		for j := range row {
			row[j] = float64(ref.Logits[i*V+j])
			mx = max(mx, row[j])
		}
		var z float64
		for _, v := range row {
			z += math.Exp(v - mx)
		}
		want := -(row[idv[i+1]] - mx - math.Log(z))
		if d := math.Abs(res.NLL[i] - want); d > 5e-3 {
			t.Fatalf("nll[%d] = %g, reference %g", i, res.NLL[i], want)
		}
		sum += want
	}
	if want := math.Exp(sum / float64(len(idv)-1)); math.Abs(res.PPL-want)/want > 1e-3 {
		t.Fatalf("ppl %g, reference %g", res.PPL, want)
	}
}

// TestJSONContract checks the per-token lines and the final summary.
func TestJSONContract(t *testing.T) {
	out, err := runCLI(t, flags{model: fixture, tokens: "2,10,20", maxTokens: 5, jsonOut: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("want token lines and a summary, got %q", out)
	}
	var done doneLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &done); err != nil || !done.Done {
		t.Fatalf("last line %q is not a done summary: %v", lines[len(lines)-1], err)
	}
	if done.PromptTokens != 3 || done.GenTokens != len(lines)-1 || (done.Reason != "eos" && done.Reason != "length") {
		t.Fatalf("summary %+v does not match %d token lines", done, len(lines)-1)
	}
	for _, l := range lines[:len(lines)-1] {
		var tl map[string]any
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			t.Fatal(err)
		}
		if _, ok := tl["id"]; !ok {
			t.Fatalf("token line %q has no id", l)
		}
		if _, ok := tl["text"]; !ok {
			t.Fatalf("token line %q has no text", l)
		}
	}
}

// TestRenderAndTokenize checks -render and -tokenize against the Gemma 4
// chat goldens (no weights are loaded).
func TestRenderAndTokenize(t *testing.T) {
	b, err := os.ReadFile("../../testdata/chat/gemma4-chat.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Name  string `json:"name"`
		Input struct {
			Messages json.RawMessage `json:"messages"`
			Tools    json.RawMessage `json:"tools"`
			Think    bool            `json:"enable_thinking"`
			AddGen   bool            `json:"add_generation_prompt"`
		} `json:"input"`
		Rendered string  `json:"rendered"`
		IDs      []int32 `json:"ids"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	tok := "../../testdata/tokenizer/gemma4style-tokenizer.json.gz"
	ran := 0
	for _, c := range cases {
		if !c.Input.AddGen {
			continue // the CLI always opens the model's turn
		}
		dir := t.TempDir()
		msgs := filepath.Join(dir, "m.json")
		os.WriteFile(msgs, c.Input.Messages, 0o644)
		f := flags{model: fixture, tokenizer: tok, messages: msgs, think: c.Input.Think, render: true}
		if len(c.Input.Tools) > 0 && string(c.Input.Tools) != "null" {
			f.tools = filepath.Join(dir, "t.json")
			os.WriteFile(f.tools, c.Input.Tools, 0o644)
		}
		out, err := runCLI(t, f, "")
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if out != c.Rendered {
			t.Fatalf("%s: -render gave\n%q\nwant\n%q", c.Name, out, c.Rendered)
		}
		f.render, f.tokenize = false, true
		out, err = runCLI(t, f, "")
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ IDs []int32 }
		json.Unmarshal([]byte(out), &got)
		if len(got.IDs) != len(c.IDs) {
			t.Fatalf("%s: -tokenize gave %d ids, want %d", c.Name, len(got.IDs), len(c.IDs))
		}
		for i := range got.IDs {
			if got.IDs[i] != c.IDs[i] {
				t.Fatalf("%s: id %d is %d, want %d", c.Name, i, got.IDs[i], c.IDs[i])
			}
		}
		ran++
	}
	if ran == 0 {
		t.Fatal("no golden case with a generation prompt")
	}
	// -raw with and without BOS.
	out, err := runCLI(t, flags{model: fixture, tokenizer: tok, prompt: "Hello", raw: true, tokenize: true}, "")
	if err != nil || !strings.HasPrefix(out, `{"ids":[2,`) {
		t.Fatalf("-raw -tokenize: %q, %v", out, err)
	}
	out, err = runCLI(t, flags{model: fixture, tokenizer: tok, prompt: "Hello", raw: true, noBOS: true, tokenize: true}, "")
	if err != nil || strings.HasPrefix(out, `{"ids":[2,`) {
		t.Fatalf("-raw -no-bos -tokenize: %q, %v", out, err)
	}
}

func TestInfoJSON(t *testing.T) {
	out, err := runCLI(t, flags{model: fixture, info: true, jsonOut: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s["experts"] != float64(16) || s["layout"] != "mlx" {
		t.Fatalf("info: %v", s)
	}
}

func TestCLIErrors(t *testing.T) {
	cases := []struct {
		name string
		f    flags
		want string
	}{
		{"missing model dir", flags{model: "does-not-exist", tokens: "2"}, "does-not-exist"},
		{"chat with the demo model", flags{chat: true}, "demo model"},
		{"tokenizer without model", flags{tokenizer: "x.json", prompt: "x"}, "-model"},
		{"no tokenizer for text", flags{model: fixture, prompt: "hello"}, "tokenizer"},
		{"context overflow", flags{model: fixture, tokens: "2,3", maxTokens: 5000}, "context length"},
		{"unknown backend", flags{model: fixture, tokens: "2", backend: "tpu"}, "unknown backend"},
		{"bad token list", flags{model: fixture, tokens: "2,x"}, "not a token id"},
		{"token outside vocabulary", flags{model: fixture, tokens: "2,9999"}, "vocabulary"},
		{"score one token", flags{model: fixture, tokens: "2", score: true}, "at least 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := runCLI(t, c.f, "")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestDemoModel: without -model the built-in demo model continues Go code.
func TestDemoModel(t *testing.T) {
	out, err := runCLI(t, flags{prompt: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.", maxTokens: 8, jsonOut: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 9 {
		t.Fatalf("want 8 token lines and a summary, got %q", out)
	}
	out, err = runCLI(t, flags{info: true, jsonOut: true}, "")
	if err != nil || !strings.Contains(out, `"experts":16`) {
		t.Fatalf("-info on the demo model: %q, %v", out, err)
	}
}

// TestInteractiveChat drives -chat through stdin for two turns with the demo
// checkpoint laid out as a model directory (the template needs a model dir).
func TestInteractiveChat(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"config.json", "model.safetensors", "tokenizer.json"} {
		b, err := os.ReadFile(filepath.Join("../../demo/model", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out, log bytes.Buffer
	f := flags{model: dir, chat: true, maxTokens: 6, backend: "cpu"}
	if err := run(context.Background(), f, strings.NewReader("func a() {\n\nfunc b() {\n/bye\n"), &out, &log); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log.String(), "Generation:"); n != 2 {
		t.Fatalf("want stats for 2 turns, got %d:\n%s", n, log.String())
	}
	if strings.Count(log.String(), "> ") < 3 {
		t.Fatalf("want a prompt per line read:\n%s", log.String())
	}
}

// TestSamplingOptions: the model's defaults, then the flags that were given.
func TestSamplingOptions(t *testing.T) {
	def := gemmoe.GenerateOptions{Temperature: 0.7, TopP: 0.95, RepeatPenalty: 1.1}
	got := samplingOptions(flags{maxTokens: 9, seed: 3, temp: 0, set: map[string]bool{"temp": true}}, def)
	if got.Temperature != 0 || got.TopP != 0.95 || got.RepeatPenalty != 1.1 || got.MaxTokens != 9 || got.Seed != 3 {
		t.Fatalf("-temp 0 over the defaults: %+v", got)
	}
	got = samplingOptions(flags{topK: 5, temp: 2, set: map[string]bool{"top-k": true}}, def)
	if got.Temperature != 0.7 || got.TopK != 5 {
		t.Fatalf("-top-k 5 only: %+v", got)
	}
}
