package chat_test

import (
	"encoding/json"
	"fmt"
	"log"

	"github.com/gemmoe/gemmoe/tokenizer/chat"
)

func ExampleRenderGemma4() {
	req := &chat.Request{
		Messages: []chat.Message{
			{Role: "system", Content: chat.Text("You are terse.")},
			{Role: "user", Content: chat.Text("What is Go?")},
		},
		AddGenerationPrompt: true,
	}
	prompt, err := chat.RenderGemma4(req)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(prompt)
	// Output:
	// <bos><|turn>system
	// You are terse.<turn|>
	// <|turn>user
	// What is Go?<turn|>
	// <|turn>model
	// <|channel>thought
	// <channel|>
}

// A request in the JSON form of transformers' apply_chat_template, with a
// tool declaration, a tool call and its response.
func ExampleRenderGemma4_tools() {
	var req chat.Request
	err := json.Unmarshal([]byte(`{
	  "messages": [
	    {"role": "user", "content": "Weather in Oslo?"},
	    {"role": "assistant", "tool_calls": [{"type": "function",
	      "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
	    {"role": "tool", "tool_responses": [{"name": "get_weather", "response": {"celsius": -3}}]}
	  ],
	  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
	    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
	  "add_generation_prompt": true
	}`), &req)
	if err != nil {
		log.Fatal(err)
	}
	prompt, err := chat.RenderGemma4(&req)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(prompt)
	// Output:
	// <bos><|turn>system
	// <|tool>declaration:get_weather{description:<|"|>Weather now.<|"|>,parameters:{properties:{city:{type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|><turn|>
	// <|turn>user
	// Weather in Oslo?<turn|>
	// <|turn>model
	// <|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|><turn|>
	// <|turn>tool
	// <|tool_response>response:get_weather{celsius:-3}<tool_response|><|channel>thought
	// <channel|>
}

func ExampleRenderGemma3() {
	prompt, err := chat.RenderGemma3(&chat.Request{
		Messages: []chat.Message{
			{Role: "system", Content: chat.Text("You are terse.")},
			{Role: "user", Content: chat.Text("Hi")},
		},
		AddGenerationPrompt: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", prompt)
	// Output:
	// "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
}
