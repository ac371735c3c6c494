package gemmoe_test

import (
	"context"
	"fmt"

	"github.com/gemmoe/gemmoe"
	"github.com/gemmoe/gemmoe/model"
)

// Load a checkpoint and look at what it is. The tiny fixture has the Gemma 4
// 26B-A4B architecture at toy size, MLX 4-bit with the router at 8 bits.
func ExampleLoad() {
	m, err := gemmoe.Load(context.Background(), "testdata/tiny-moe-4bit", gemmoe.WithBackend("cpu"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	info := m.Info()
	fmt.Println(m.Backend(), info.Layers, "layers,", info.Experts, "experts, top", info.TopK)
	fmt.Println("experts:", info.Quantization["experts"], "router:", info.Quantization["router"])
	// Output:
	// cpu 6 layers, 16 experts, top 4
	// experts: 4-bit g64 router: 8-bit g64
}

// Decode greedily from raw token ids with a session of the underlying model
// (the fixture has no tokenizer; with one, Model.Generate takes text). These
// are the tokens transformers produces for the same prompt.
func ExampleModel_Inner() {
	m, err := gemmoe.Load(context.Background(), "testdata/tiny-moe-4bit", gemmoe.WithBackend("cpu"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	s, err := m.Inner().NewSession()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	prompt := []int32{264, 501, 476, 386, 400, 440, 56, 341, 501, 487, 73, 362}
	for tok, err := range s.Generate(context.Background(), prompt, model.GenerateOptions{MaxTokens: 4}, nil) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Print(tok.ID, " ")
	}
	fmt.Println()
	// Output:
	// 117 115 104 124
}

// The demo model built into the binary completes Go code (greedy here).
func ExampleLoadDemo() {
	ctx := context.Background()
	m, err := gemmoe.LoadDemo(ctx, gemmoe.WithBackend("cpu"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	text, err := m.Generate(ctx, "func (b *Buffer) Len() int {", gemmoe.GenerateOptions{MaxTokens: 8})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%q\n", text)
	// Output:
	// " return len(b.buf) }"
}
