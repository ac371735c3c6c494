package fixturetest

import (
	"context"
	"errors"
	"github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"testing"

	"github.com/gemmoe/gemmoe/demo"
	kmetal "github.com/gemmoe/gemmoe/kernels/metal"
	"github.com/gemmoe/gemmoe/model"
)

// TestDemoBF16 runs the trained demo model through the emulated Metal
// kernels with their default bf16 activations and compares per-token NLLs of
// a held-out window with transformers' float32 run. The tiny random fixtures
// cannot serve here (their near-tied routing flips under any bf16
// rounding); a trained model routes decisively. Measured: max |ΔNLL| 0.11
// over 64 tokens.
func TestDemoBF16(t *testing.T) {
	if testing.Short() {
		t.Skip("a model through the emulator")
	}
	ref, err := fixture.LoadDemo()
	if err != nil {
		t.Fatal(err)
	}
	be, err := kmetal.NewEmulated()
	if errors.Is(err, kmetal.ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	src, err := demo.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := model.New(src, be, model.Options{Chunk: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 32
	logits, err := s.ForwardAll(context.Background(), ref.Window.InputIDs[:n], nil)
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	for i, row := range logits {
		worst = math.Max(worst, math.Abs(fixture.NLL(row, ref.Window.TargetIDs[i])-ref.Window.NLL[i]))
	}
	t.Logf("bf16 activations: max |NLL - reference| over %d tokens = %.3g", n, worst)
	if worst > 0.25 {
		t.Fatalf("per-token NLL deviates by %.3g > 0.25 with bf16 activations", worst)
	}
}
