package model_test

import (
	"context"
	"sync"
	"testing"

	"github.com/gemmoe/gemmoe/model"
)

// TestConcurrentSessions runs several sessions of one model at once (run
// with -race) and checks each gets the reference greedy tokens.
func TestConcurrentSessions(t *testing.T) {
	ref := readReference(t, "tiny-moe-4bit")
	m, _ := open(t, "tiny-moe-4bit", model.Options{Chunk: 8})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	got := make([][]int32, 4)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := m.NewSession()
			if err != nil {
				errs[g] = err
				return
			}
			defer s.Close()
			for tok, err := range s.Generate(context.Background(), ref.GreedyPrompt, model.GenerateOptions{MaxTokens: 10}, nil) {
				if err != nil {
					errs[g] = err
					return
				}
				got[g] = append(got[g], tok.ID)
			}
		}()
	}
	wg.Wait()
	for g := range errs {
		if errs[g] != nil {
			t.Fatal(errs[g])
		}
		for i, id := range got[g] {
			if id != ref.GreedyTokens[i] {
				t.Fatalf("session %d token %d: got %d want %d", g, i, id, ref.GreedyTokens[i])
			}
		}
	}
}

// TestTruncateReuse: rolling a session back and feeding other tokens gives
// the logits of a fresh session over the same sequence; rolling back further
// than a sliding ring still holds is refused.
func TestTruncateReuse(t *testing.T) {
	ref := readReference(t, "tiny-moe")
	ids := ref.InputIDs
	m, _ := open(t, "tiny-moe", model.Options{Chunk: 4})
	ctx := context.Background()
	fresh, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	want, err := fresh.Forward(ctx, ids[:20])
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Forward(ctx, append(append([]int32{}, ids[:17]...), 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.Truncate(17); err != nil {
		t.Fatal(err)
	}
	got, err := s.Forward(ctx, ids[17:20])
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(got, want); d > 1e-5 {
		t.Fatalf("after truncate, logits differ from a fresh session by %g", d)
	}
	if err := s.Truncate(2); err == nil {
		t.Fatal("truncating 18 positions back past a ring of window+chunk-1 should fail")
	}
	if err := s.Truncate(99); err == nil {
		t.Fatal("truncating past the end should fail")
	}
}

// TestForwardInto feeds a fixture's tokens with ForwardInto, one at a time
// after the first half: each step's logits must match transformers' for
// that position (within the fixture bound) and land in the caller's
// buffer once it has room.
func TestForwardInto(t *testing.T) {
	ref := readReference(t, "tiny-moe")
	m, _ := open(t, "tiny-moe", model.Options{Chunk: 8})
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	V, T := m.Config.VocabSize, len(ref.InputIDs)
	half := T / 2
	logits, err := s.ForwardInto(context.Background(), ref.InputIDs[:half], nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(pos int, got []float32) {
		t.Helper()
		if d := maxAbsDiff(got, ref.Logits[pos*V:(pos+1)*V]); d > 5e-3 {
			t.Fatalf("position %d: logits differ from the reference by %.3g > 5e-3", pos, d)
		}
	}
	check(half-1, logits)
	buf := logits
	for pos := half; pos < T; pos++ {
		if logits, err = s.ForwardInto(context.Background(), ref.InputIDs[pos:pos+1], logits); err != nil {
			t.Fatal(err)
		}
		if &logits[0] != &buf[0] {
			t.Fatalf("position %d: logits not read into the buffer passed in", pos)
		}
		check(pos, logits)
	}
}
