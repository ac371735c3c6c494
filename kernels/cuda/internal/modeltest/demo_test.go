package modeltest

import (
	"context"
	"github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"testing"

	"github.com/gemmoe/gemmoe/demo"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	kcuda "github.com/gemmoe/gemmoe/kernels/cuda"
	"github.com/gemmoe/gemmoe/model"
)

// TestDemoBF16 runs the trained demo model (whose routing is decisive,
// unlike the random fixtures') with bf16 activations: the logits of a
// held-out window are compared with the CPU backend's f32 logits (which
// match transformers within 1.2e-5 in NLL) to measure the bf16 bound, and
// the greedy continuation must be transformers' wherever its top-2 margin
// exceeds twice that bound.
func TestDemoBF16(t *testing.T) {
	ref, err := fixture.LoadDemo()
	if err != nil {
		t.Fatal(err)
	}
	gpu, err := kcuda.New(kcuda.WithActivationDType(dtype.BF16))
	if err != nil {
		t.Skipf("no CUDA driver: %v", err)
	}
	defer gpu.Close()
	host := cpu.New()
	defer host.Close()
	logits := func(be kernels.Backend) [][]float32 {
		src, err := demo.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		m, err := model.New(src, be, model.Options{Chunk: 256})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		l, err := s.ForwardAll(context.Background(), ref.Window.InputIDs, nil)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	want, got := logits(host), logits(gpu)
	var bound float64
	for i := range want {
		for j := range want[i] {
			bound = math.Max(bound, math.Abs(float64(got[i][j]-want[i][j])))
		}
	}
	t.Logf("bf16 activations: max |logits - f32 logits| over %d tokens = %.3g", len(want), bound)
	// Measured: 2.97 on an H200; the CPU backend with bf16 activations
	// through the plain ops gives 3.03 on the same window, so this is the
	// bf16 rounding of the activations, not a CUDA kernel. Twice that.
	if bound > 6 {
		t.Fatalf("bf16 logits deviate by %.3g", bound)
	}

	src, err := demo.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := model.New(src, gpu, model.Options{Chunk: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var toks []int32
	for tok, err := range s.Generate(context.Background(), ref.Greedy.Prompt, model.GenerateOptions{MaxTokens: len(ref.Greedy.Tokens)}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok.ID)
	}
	match := 0
	for match < len(toks) && toks[match] == ref.Greedy.Tokens[match] {
		match++
	}
	t.Logf("bf16 greedy through the CUDA graph: %d/%d tokens (reference margin %.3g)", match, len(ref.Greedy.Tokens), ref.Greedy.MinMargin)
	if ref.Greedy.MinMargin > 2*bound && match != len(ref.Greedy.Tokens) {
		t.Fatalf("greedy diverges at %d although the margin %.3g exceeds twice the bound %.3g", match, ref.Greedy.MinMargin, bound)
	}
}
