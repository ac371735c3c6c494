// Package fixturetest runs the whole Gemma 4 model of the test fixtures
// (../../../../testdata) through the emulated Metal backend and compares it
// with the transformers reference. It lives in its own package so that the
// kernel tests do not depend on the model packages.
package fixturetest

import (
	"context"
	"errors"
	"github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	kmetal "github.com/gemmoe/gemmoe/kernels/metal"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

func readReference(t *testing.T, name string) *fixture.Reference {
	t.Helper()
	ref, err := fixture.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// open loads a fixture onto a new emulated Metal backend with activations in act.
func open(t *testing.T, name string, act dtype.DType) *model.Model {
	t.Helper()
	b, err := kmetal.NewEmulated()
	if errors.Is(err, kmetal.ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetActivationDType(act); err != nil {
		t.Fatal(err)
	}
	src, err := loader.Open(filepath.Join("..", "..", "..", "..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.New(src, b, model.Options{Chunk: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close(); src.Close() })
	return m
}

// TestFixtureLogitsF32 runs the full-sequence forward with f32 activations,
// so the Metal kernels are compared without bf16 rounding: the logits must
// be within the CPU backend's 5e-3 of transformers.
func TestFixtureLogitsF32(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole model through the emulator")
	}
	for _, name := range []string{"tiny-moe-4bit", "tiny-moe-mixed", "tiny-e2b"} {
		t.Run(name, func(t *testing.T) {
			ref := readReference(t, name)
			m := open(t, name, dtype.F32)
			s, err := m.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			logits, err := s.ForwardAll(context.Background(), ref.InputIDs, nil)
			if err != nil {
				t.Fatal(err)
			}
			v := m.Config.VocabSize
			worst := 0.0
			for r, row := range logits {
				for i, x := range row {
					worst = math.Max(worst, math.Abs(float64(x-ref.Logits[r*v+i])))
				}
			}
			t.Logf("max |logits - reference| = %.3g", worst)
			if worst > 5e-3 {
				t.Errorf("logits differ from the reference by %.3g > 5e-3", worst)
			}
		})
	}
}

// TestFixtureGreedyF32 generates greedily with f32 activations: the tokens
// must be transformers' tokens.
func TestFixtureGreedyF32(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole model through the emulator")
	}
	const name = "tiny-moe-8bit"
	ref := readReference(t, name)
	m := open(t, name, dtype.F32)
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []int32
	for tok, err := range s.Generate(context.Background(), ref.GreedyPrompt, model.GenerateOptions{MaxTokens: len(ref.GreedyTokens)}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tok.ID)
	}
	for i := range ref.GreedyTokens {
		if i >= len(got) || got[i] != ref.GreedyTokens[i] {
			t.Fatalf("greedy tokens %v, want %v", got, ref.GreedyTokens)
		}
	}
}
