package model_test

import (
	"context"
	"math"
	"testing"

	"github.com/gemmoe/gemmoe/model"
)

// e2b is the E2B/E4B-style fixture: per-layer embeddings (PLE), KV sharing
// (the last 2 layers reuse the K/V of layers 2 and 3) and the double-wide MLP
// of the shared layers, dense. Made by tools/fixtures/make_e2b_fixture.py with
// transformers, not by this project.
const e2b = "tiny-e2b"

// TestE2BConfig checks that the loader reads the fixture's architecture as
// transformers built it: K/V donors, MLP widths, head dims.
func TestE2BConfig(t *testing.T) {
	m, _ := open(t, e2b, model.Options{})
	c := m.Config
	if c.PLEDim != 16 || c.PLEVocabSize != 512 || c.NumKVSharedLayers != 2 || !c.UseDoubleWideMLP {
		t.Fatalf("PLE/KV-sharing keys: %+v", c)
	}
	want := []struct{ shared, width, headDim, kvHeads int }{
		{-1, 192, 32, 2}, {-1, 192, 32, 2}, {-1, 192, 32, 2}, {-1, 192, 64, 1}, {2, 384, 32, 2}, {3, 384, 64, 1},
	}
	for i, w := range want {
		l := c.Layers[i]
		if l.KVSharedOf != w.shared || l.MLPWidth != w.width || l.HeadDim != w.headDim || l.KVHeads != w.kvHeads {
			t.Errorf("layer %d: KVSharedOf %d MLPWidth %d HeadDim %d KVHeads %d, want %+v", i, l.KVSharedOf, l.MLPWidth, l.HeadDim, l.KVHeads, w)
		}
	}
}

// TestE2BLogits checks the full-sequence forward against transformers: every
// layer's hidden state within 1e-3 relative, logits within 5e-3.
func TestE2BLogits(t *testing.T) {
	ref := readReference(t, e2b)
	m, _ := open(t, e2b, model.Options{Chunk: 64})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	T, H, V, L := len(ref.InputIDs), m.Config.HiddenSize, m.Config.VocabSize, m.Config.NumLayers
	if len(ref.RouterIDs) != 0 {
		t.Fatalf("dense fixture has router references")
	}
	// The trace sees each step's [T, hidden] rows: concatenate them per
	// layer (one step here: the prompt fits a chunk).
	hidden := make([][]float32, L+1)
	trace := &model.Trace{
		Hidden: func(layer int, h []float32) { hidden[layer+1] = append(hidden[layer+1], h...) },
		Router: func(layer int, _ []int32, _ []float32) {
			t.Fatalf("router trace from layer %d of a dense model", layer)
		},
	}
	logits, err := s.ForwardAll(context.Background(), ref.InputIDs, trace)
	if err != nil {
		t.Fatal(err)
	}
	if len(logits) != T {
		t.Fatalf("%d rows of logits, want %d", len(logits), T)
	}
	// hidden_states[L] is after the final norm: compare 0..L-1 (the
	// embedding and the outputs of layers 0..L-2); the last layer is checked
	// through the logits.
	for i := 0; i < L; i++ {
		want, got := ref.Hidden[i*T*H:(i+1)*T*H], hidden[i]
		if len(got) != len(want) {
			t.Fatalf("hidden state %d: %d values, want %d", i, len(got), len(want))
		}
		var num, den float64
		for j := range want {
			num = max(num, math.Abs(float64(got[j]-want[j])))
			den = max(den, math.Abs(float64(want[j])))
		}
		t.Logf("hidden state %d: max |Δ| %.3g (max |h| %.3g)", i, num, den)
		if num/den > 1e-3 {
			t.Fatalf("hidden state %d (after layer %d) differs: max |Δ| %.3g relative to max |h| %.3g = %.3g > 1e-3", i, i-1, num, den, num/den)
		}
	}
	var worst float64
	for r := 0; r < T; r++ {
		worst = max(worst, maxAbsDiff(logits[r], ref.Logits[r*V:(r+1)*V]))
	}
	t.Logf("max |logits - reference| = %.3g", worst)
	if worst > 5e-3 {
		t.Fatalf("logits differ from the reference by %.3g > 5e-3", worst)
	}
}

// TestE2BGreedy decodes greedily through the KV cache (prompt 12 + 28
// generated = 40 positions, past the window of 16, with shared layers
// reading their donors' caches) and must reproduce transformers' tokens
// exactly.
func TestE2BGreedy(t *testing.T) {
	ref := readReference(t, e2b)
	if ref.MinMargin < 0.1 {
		t.Fatalf("fixture greedy margin %.3g < 0.1: exact tokens are not a fair test", ref.MinMargin)
	}
	m, _ := open(t, e2b, model.Options{Chunk: 8})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []int32
	opts := model.GenerateOptions{MaxTokens: len(ref.GreedyTokens)}
	for tok, err := range s.Generate(context.Background(), ref.GreedyPrompt, opts, nil) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tok.ID)
	}
	if len(got) != len(ref.GreedyTokens) {
		t.Fatalf("generated %d tokens, want %d (%v)", len(got), len(ref.GreedyTokens), got)
	}
	for i := range got {
		if got[i] != ref.GreedyTokens[i] {
			t.Fatalf("token %d: got %d want %d (all: %v)", i, got[i], ref.GreedyTokens[i], got)
		}
	}
}
