package model_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/internal/fixture"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

var fixtures = fixture.Names

// readReference reads what transformers computed for the fixture model.
func readReference(t *testing.T, name string) *fixture.Reference {
	t.Helper()
	ref, err := fixture.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func open(t *testing.T, name string, opts model.Options, cpuOpts ...cpu.Option) (*model.Model, *loader.Model) {
	t.Helper()
	src, err := loader.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(cpuOpts...)
	m, err := model.New(src, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close(); src.Close() })
	return m, src
}

func maxAbsDiff(a, b []float32) float64 { return fixture.MaxAbsDiff(a, b) }

// generated runs Generate from prompt on a new session of m and returns the
// tokens.
func generated(t *testing.T, m *model.Model, prompt []int32, opts model.GenerateOptions) []int32 {
	t.Helper()
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []int32
	for tok, err := range s.Generate(context.Background(), prompt, opts, nil) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tok.ID)
	}
	return got
}

// TestFixtureLogits checks the full-sequence forward against transformers:
// hidden states per layer within 1e-3 relative, the router's top-k ids
// identical, and the logits within 5e-3 with float64 sums in the quantized
// matmuls (WithFloat64Sums, as the generic kernels sum), within 1e-2 with
// the kernels that sum in f32 (the default on AVX-512 and NEON) and with
// int24 activations for the 4-bit weights (the default on AVX2; elsewhere
// as f32). Their rounding differs from
// transformers' about as much as transformers' own cached and uncached runs
// differ, and these random networks amplify such differences ~10⁴ from the
// first layer to the logits (measured: 4.95e-3 with AVX-512, 5.6e-3 with
// AVX2, 4.8e-3 with NEON under qemu, on the 8-bit fixture).
func TestFixtureLogits(t *testing.T) {
	for _, k := range []struct {
		name  string
		bound float64
		opts  []cpu.Option
	}{
		{"f32", 1e-2, []cpu.Option{cpu.WithInt24Activations(false)}},
		{"int24", 1e-2, []cpu.Option{cpu.WithInt24Activations(true)}},
		{"f64", 5e-3, []cpu.Option{cpu.WithFloat64Sums(true)}},
	} {
		for _, name := range fixtures {
			t.Run(fmt.Sprintf("%s/%s", name, k.name), func(t *testing.T) {
				testFixtureLogits(t, name, k.bound, k.opts...)
			})
		}
	}
}

func testFixtureLogits(t *testing.T, name string, bound float64, opts ...cpu.Option) {
	ref := readReference(t, name)
	m, _ := open(t, name, model.Options{Chunk: 64}, opts...)
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	T, H, V := len(ref.InputIDs), m.Config.HiddenSize, m.Config.VocabSize
	L := m.Config.NumLayers
	hidden := make([][]float32, L+1)
	var routerIDs [][]int32
	trace := &model.Trace{
		Hidden: func(layer int, h []float32) {
			if layer < L-1 {
				hidden[layer+1] = h
			}
		},
		Router: func(layer int, ids []int32, _ []float32) { routerIDs = append(routerIDs, ids) },
	}
	logits, err := s.ForwardAll(context.Background(), ref.InputIDs, trace)
	if err != nil {
		t.Fatal(err)
	}
	// Per-layer hidden states first: they tell where a divergence starts.
	for i := 0; i < L; i++ {
		want := ref.Hidden[i*T*H : (i+1)*T*H]
		got := hidden[i]
		var num, den float64
		for j := range want {
			num = max(num, math.Abs(float64(got[j]-want[j])))
			den = max(den, math.Abs(float64(want[j])))
		}
		if num/den > 1e-3 {
			t.Fatalf("hidden state %d (after layer %d) differs: max |Δ| %.3g relative to max |h| %.3g = %.3g > 1e-3", i, i-1, num, den, num/den)
		}
	}
	for l, ids := range routerIDs {
		want := ref.RouterIDs[l*len(ids) : (l+1)*len(ids)]
		for j := range ids {
			if ids[j] != want[j] {
				t.Fatalf("layer %d router ids differ at %d: got %v want %v", l, j, ids[j], want[j])
			}
		}
	}
	var worst float64
	for r := 0; r < T; r++ {
		worst = max(worst, maxAbsDiff(logits[r], ref.Logits[r*V:(r+1)*V]))
	}
	t.Logf("max |logits - reference| = %.3g", worst)
	if worst > bound {
		t.Fatalf("logits differ from the reference by %.3g > %.3g", worst, bound)
	}
}
