package model_test

import (
	"context"
	"errors"
	"testing"

	"github.com/gemmoe/gemmoe/model"
)

// TestFixtureGreedy decodes greedily through the KV cache (prompt 12 + 28
// generated = 40 positions, past the window of 16) and must reproduce
// transformers' tokens exactly.
func TestFixtureGreedy(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			ref := readReference(t, name)
			m, _ := open(t, name, model.Options{Chunk: 8})
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
				t.Fatalf("generated %d tokens, want %d", len(got), len(ref.GreedyTokens))
			}
			for i := range got {
				if got[i] != ref.GreedyTokens[i] {
					t.Fatalf("token %d: got %d want %d (all: %v)", i, got[i], ref.GreedyTokens[i], got)
				}
			}
		})
	}
}

// TestChunkedPrefill feeds the 48 reference tokens 5 at a time and one at a
// time; the logits must equal one-shot prefill within 1e-4.
func TestChunkedPrefill(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			ref := readReference(t, name)
			oneShot := forwardInChunks(t, name, ref.InputIDs, 64)
			for _, chunk := range []int{5, 1} {
				got := forwardInChunks(t, name, ref.InputIDs, chunk)
				for r := range got {
					if d := maxAbsDiff(got[r], oneShot[r]); d > 1e-4 {
						t.Fatalf("chunk %d: row %d differs from one-shot prefill by %.3g > 1e-4", chunk, r, d)
					}
				}
			}
		})
	}
}

func forwardInChunks(t *testing.T, name string, ids []int32, chunk int) [][]float32 {
	t.Helper()
	m, _ := open(t, name, model.Options{Chunk: chunk})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out [][]float32
	for start := 0; start < len(ids); start += chunk {
		l, err := s.ForwardAll(context.Background(), ids[start:min(start+chunk, len(ids))], nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l...)
	}
	return out
}

// TestSlidingCacheBounded runs 3× the window and checks the sliding layers'
// ring never grows: window + chunk - 1 slots whatever the context.
func TestSlidingCacheBounded(t *testing.T) {
	const chunk = 4
	m, _ := open(t, "tiny-moe-4bit", model.Options{Chunk: chunk})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	window := m.Config.SlidingWindow
	want := window + chunk - 1
	ids := make([]int32, 3*window)
	for i := range ids {
		ids[i] = int32(5 + i%400)
	}
	before := s.SlidingCacheSlots()
	if _, err := s.Forward(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	if got := s.SlidingCacheSlots(); got != want || before != want {
		t.Fatalf("sliding ring has %d slots before and %d after %d tokens, want %d", before, got, len(ids), want)
	}
	under, past := m.KVBytesPerToken()
	if under <= past || past <= 0 {
		t.Fatalf("KV bytes per token: %d under the window, %d past it", under, past)
	}
}

func TestGenerateErrors(t *testing.T) {
	m, _ := open(t, "tiny-moe-4bit", model.Options{Chunk: 8, ContextLength: 32})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cases := []struct {
		name   string
		prompt []int32
		opts   model.GenerateOptions
	}{
		{"context overflow", []int32{2, 3, 4}, model.GenerateOptions{MaxTokens: 40}},
		{"empty prompt", nil, model.GenerateOptions{MaxTokens: 4}},
		{"token outside vocabulary", []int32{2, 99999}, model.GenerateOptions{MaxTokens: 4}},
		{"negative temperature", []int32{2}, model.GenerateOptions{MaxTokens: 4, SampleOptions: model.SampleOptions{Temperature: -1}}},
		{"top-p above 1", []int32{2}, model.GenerateOptions{MaxTokens: 4, SampleOptions: model.SampleOptions{TopP: 2}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got error
			for _, err := range s.Generate(context.Background(), c.prompt, c.opts, nil) {
				if err != nil {
					got = err
					break
				}
			}
			if got == nil {
				t.Fatal("want an error")
			}
			t.Log(got)
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var got error
		for _, err := range s.Generate(ctx, []int32{2, 3}, model.GenerateOptions{MaxTokens: 4}, nil) {
			got = err
		}
		if !errors.Is(got, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", got)
		}
	})
}

// TestSeededSampling: the same seed gives the same tokens.
func TestSeededSampling(t *testing.T) {
	m, _ := open(t, "tiny-moe-8bit", model.Options{Chunk: 8})
	run := func(seed uint64) []int32 {
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var out []int32
		opts := model.GenerateOptions{MaxTokens: 12, SampleOptions: model.SampleOptions{Temperature: 1, TopP: 0.95, Seed: seed}}
		for tok, err := range s.Generate(context.Background(), []int32{2, 10, 20}, opts, nil) {
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tok.ID)
		}
		return out
	}
	a, b, c := run(7), run(7), run(8)
	if len(a) != len(b) {
		t.Fatalf("seeded runs differ: %v vs %v", a, b)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seeded runs differ: %v vs %v", a, b)
		}
	}
	same := len(a) == len(c)
	for i := 0; same && i < len(a); i++ {
		same = a[i] == c[i]
	}
	if same {
		t.Fatalf("seeds 7 and 8 gave the same %d tokens", len(a))
	}
}

// TestFullCacheGrows: with a growth step of 8 positions the full layer's
// cache is reallocated several times over 48 tokens, and the logits stay
// those of a cache that never grows.
func TestFullCacheGrows(t *testing.T) {
	ref := readReference(t, "tiny-moe")
	want := forwardInChunks(t, "tiny-moe", ref.InputIDs, 5)
	m, _ := open(t, "tiny-moe", model.Options{Chunk: 5, CacheGrow: 8})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := s.CacheBytes()
	var got [][]float32
	for start := 0; start < len(ref.InputIDs); start += 5 {
		l, err := s.ForwardAll(context.Background(), ref.InputIDs[start:min(start+5, len(ref.InputIDs))], nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l...)
	}
	if s.CacheBytes() <= before {
		t.Fatalf("the full cache did not grow: %d bytes before, %d after", before, s.CacheBytes())
	}
	for r := range got {
		if d := maxAbsDiff(got[r], want[r]); d != 0 {
			t.Fatalf("row %d differs by %g after the cache grew", r, d)
		}
	}
}
