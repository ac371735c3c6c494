package model_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// A decode loop of one's own: ForwardInto reads each step's logits into
// the same buffer, and the next token here is their argmax (greedy). The
// tokens are those transformers produces for this prompt on the fixture.
func ExampleSession_ForwardInto() {
	src, err := loader.Open(filepath.Join("..", "testdata", "tiny-moe-4bit"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer src.Close()
	b := cpu.New()
	defer b.Close()
	m, err := model.New(src, b, model.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx := context.Background()
	var logits []float32
	next := []int32{264, 501, 476, 386, 400, 440, 56, 341, 501, 487, 73, 362} // the prompt
	for range 4 {
		if logits, err = s.ForwardInto(ctx, next, logits); err != nil {
			fmt.Println(err)
			return
		}
		tok := int32(slices.Index(logits, slices.Max(logits)))
		fmt.Print(tok, " ")
		next = []int32{tok}
	}
	fmt.Println()
	// Output:
	// 117 115 104 124
}
