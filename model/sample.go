package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// SampleOptions choose the next token from logits. The zero value is greedy.
type SampleOptions struct {
	Temperature   float64 // 0: greedy (argmax)
	TopK          int     // keep the k most likely tokens (0: all)
	TopP          float64 // keep the smallest set with probability ≥ TopP (0 or 1: all)
	MinP          float64 // drop tokens with p < MinP·p_max (0: none)
	RepeatPenalty float64 // > 1 penalizes tokens seen in the last RepeatWindow (0 or 1: none)
	RepeatWindow  int     // tokens looked back for the penalty (default 64)
	Seed          uint64  // same seed, same tokens
}

// Validate reports options out of range.
func (o SampleOptions) Validate() error {
	switch {
	case o.Temperature < 0 || math.IsNaN(o.Temperature):
		return fmt.Errorf("temperature %g must be ≥ 0", o.Temperature)
	case o.TopK < 0:
		return fmt.Errorf("top-k %d must be ≥ 0", o.TopK)
	case o.TopP < 0 || o.TopP > 1:
		return fmt.Errorf("top-p %g must be in [0, 1]", o.TopP)
	case o.MinP < 0 || o.MinP > 1:
		return fmt.Errorf("min-p %g must be in [0, 1]", o.MinP)
	case o.RepeatPenalty < 0:
		return fmt.Errorf("repeat penalty %g must be ≥ 0", o.RepeatPenalty)
	}
	return nil
}

// Sampler picks tokens from logits with a seeded generator.
type Sampler struct {
	opts  SampleOptions
	rng   *rand.Rand
	idx   []int
	probs []float64
}

// NewSampler returns a sampler for opts.
func NewSampler(opts SampleOptions) *Sampler {
	if opts.RepeatWindow <= 0 {
		opts.RepeatWindow = 64
	}
	return &Sampler{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, 0x9e3779b97f4a7c15))}
}

// Candidates returns the token ids that may be drawn from logits and their
// probabilities (summing to 1), after the penalty, temperature, top-k, min-p
// and top-p filters; greedy returns the argmax alone. recent is the history
// the repetition penalty looks at. logits is modified by the penalty.
func (s *Sampler) Candidates(logits []float32, recent []int32) ([]int, []float64) {
	o := s.opts
	if o.RepeatPenalty > 0 && o.RepeatPenalty != 1 {
		from := max(0, len(recent)-o.RepeatWindow)
		seen := map[int32]bool{}
		for _, id := range recent[from:] {
			if seen[id] || int(id) >= len(logits) || id < 0 {
				continue
			}
			seen[id] = true
			if logits[id] > 0 {
				logits[id] /= float32(o.RepeatPenalty)
			} else {
				logits[id] *= float32(o.RepeatPenalty)
			}
		}
	}
	if o.Temperature == 0 {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		return []int{best}, []float64{1}
	}
	idx := s.idx[:0]
	for i := range logits {
		idx = append(idx, i)
	}
	// Stable: equal logits keep the lower id first.
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	if o.TopK > 0 && o.TopK < len(idx) {
		idx = idx[:o.TopK]
	}
	probs := s.probs[:0]
	maxL := float64(logits[idx[0]])
	var sum float64
	for _, i := range idx {
		p := math.Exp((float64(logits[i]) - maxL) / o.Temperature)
		probs = append(probs, p)
		sum += p
	}
	for i := range probs {
		probs[i] /= sum
	}
	if o.MinP > 0 {
		cut := o.MinP * probs[0]
		n := len(probs)
		for n > 1 && probs[n-1] < cut {
			n--
		}
		idx, probs = idx[:n], probs[:n]
	}
	if o.TopP > 0 && o.TopP < 1 {
		var acc float64
		for n, p := range probs {
			acc += p
			if acc >= o.TopP {
				idx, probs = idx[:n+1], probs[:n+1]
				break
			}
		}
	}
	sum = 0
	for _, p := range probs {
		sum += p
	}
	for i := range probs {
		probs[i] /= sum
	}
	s.idx, s.probs = idx, probs
	return idx, probs
}

// Sample draws the next token.
func (s *Sampler) Sample(logits []float32, recent []int32) int32 {
	idx, probs := s.Candidates(logits, recent)
	if len(idx) == 1 {
		return int32(idx[0])
	}
	r := s.rng.Float64()
	for i, p := range probs {
		r -= p
		if r < 0 {
			return int32(idx[i])
		}
	}
	return int32(idx[len(idx)-1])
}
