package model

import (
	"math"
	"testing"
)

// TestSamplerSets checks, on a fixed logits vector, that each filter keeps
// exactly the tokens it should (computed by hand from softmax), and that
// draws follow the kept probabilities (chi-square on 20000 draws).
func TestSamplerSets(t *testing.T) {
	// softmax at T=1 of these logits: p ∝ e^l.
	logits := []float32{2, 1, 0, -1, 3, 3, -5}
	// exp: e^2=7.389, e^1=2.718, 1, 0.368, 20.09, 20.09, 0.0067; total 51.65
	// sorted: 4 (0.389), 5 (0.389), 0 (0.143), 1 (0.053), 2 (0.019), 3 (0.007), 6 (0.0001)
	cases := []struct {
		name string
		opts SampleOptions
		want []int
	}{
		{"greedy picks the lower id on ties", SampleOptions{}, []int{4}},
		{"top-k 3", SampleOptions{Temperature: 1, TopK: 3}, []int{4, 5, 0}},
		{"top-p 0.8 stops once 0.778+0.143 ≥ 0.8", SampleOptions{Temperature: 1, TopP: 0.8}, []int{4, 5, 0}},
		{"top-p 0.7 needs both 3s", SampleOptions{Temperature: 1, TopP: 0.7}, []int{4, 5}},
		{"min-p 0.1 drops p < 0.0389", SampleOptions{Temperature: 1, MinP: 0.1}, []int{4, 5, 0, 1}},
		{"min-p 0.5 keeps p ≥ 0.194", SampleOptions{Temperature: 1, MinP: 0.5}, []int{4, 5}},
		{"no filter keeps all", SampleOptions{Temperature: 1}, []int{4, 5, 0, 1, 2, 3, 6}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewSampler(c.opts)
			l := append([]float32(nil), logits...)
			idx, probs := s.Candidates(l, nil)
			if len(idx) != len(c.want) {
				t.Fatalf("kept %v, want %v", idx, c.want)
			}
			var sum float64
			for i := range idx {
				if idx[i] != c.want[i] {
					t.Fatalf("kept %v, want %v", idx, c.want)
				}
				sum += probs[i]
			}
			if math.Abs(sum-1) > 1e-9 {
				t.Fatalf("kept probabilities sum to %g", sum)
			}
			// Draws stay in the set and follow the probabilities.
			const n = 20000
			counts := map[int32]int{}
			for range n {
				l := append([]float32(nil), logits...)
				counts[s.Sample(l, nil)]++
			}
			var chi2 float64
			for i, id := range idx {
				exp := probs[i] * n
				d := float64(counts[int32(id)]) - exp
				chi2 += d * d / exp
				delete(counts, int32(id))
			}
			if len(counts) != 0 {
				t.Fatalf("drew tokens outside the kept set: %v", counts)
			}
			// 99.9% quantile of chi-square with ≤ 6 degrees of freedom is 22.5.
			if chi2 > 22.5 {
				t.Fatalf("draws do not follow the probabilities: chi2 = %.1f", chi2)
			}
		})
	}
}

func TestSamplerTemperature(t *testing.T) {
	logits := []float32{1, 0}
	for _, temp := range []float64{0.5, 1, 2} {
		s := NewSampler(SampleOptions{Temperature: temp})
		_, probs := s.Candidates(append([]float32(nil), logits...), nil)
		want := 1 / (1 + math.Exp(-1/temp))
		if math.Abs(probs[0]-want) > 1e-12 {
			t.Fatalf("T=%g: p(top) = %g, want %g", temp, probs[0], want)
		}
	}
}

func TestRepeatPenalty(t *testing.T) {
	s := NewSampler(SampleOptions{RepeatPenalty: 2, RepeatWindow: 2})
	l := []float32{4, -4, 3, 1}
	s.Candidates(l, []int32{0, 1, 3, 3}) // window: the last two ids, {3}
	want := []float32{4, -4, 3, 0.5}
	for i := range l {
		if l[i] != want[i] {
			t.Fatalf("penalized logits %v, want %v", l, want)
		}
	}
	l = []float32{4, -4, 3, 1}
	NewSampler(SampleOptions{RepeatPenalty: 2}).Candidates(l, []int32{0, 1})
	if l[0] != 2 || l[1] != -8 {
		t.Fatalf("penalty: got %v, want positive logits divided and negative multiplied", l)
	}
}
