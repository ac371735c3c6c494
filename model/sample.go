package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/gemmoe/gemmoe/kernels"
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

// Sampler picks tokens from logits with a seeded generator. It never sorts
// the whole vocabulary: the candidates of top-k, top-p and min-p come from a
// partial selection that widens until the filters are decided, and plain
// temperature sampling scans the logits once.
type Sampler struct {
	opts  SampleOptions
	rng   *rand.Rand
	idx   []int
	probs []float64
	heap  []int
	seen  map[int32]bool
	one   [1]int
	unit  [1]float64

	// sampleFrom's candidates in id order.
	order  []int
	sub    []float32
	subIDs []int32
}

// NewSampler returns a sampler for opts.
func NewSampler(opts SampleOptions) *Sampler {
	if opts.RepeatWindow <= 0 {
		opts.RepeatWindow = 64
	}
	return &Sampler{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, 0x9e3779b97f4a7c15)), seen: map[int32]bool{}}
}

// penalize applies the repetition penalty to the tokens of the recent window.
func (s *Sampler) penalize(logits []float32, recent []int32) {
	s.eachPenalized(recent, func(id int32) {
		if int(id) < len(logits) && id >= 0 {
			s.penalty(&logits[id])
		}
	})
}

// penalizeSub applies it to logits of the tokens ids (ascending).
func (s *Sampler) penalizeSub(logits []float32, ids, recent []int32) {
	s.eachPenalized(recent, func(id int32) {
		if i, ok := slices.BinarySearch(ids, id); ok {
			s.penalty(&logits[i])
		}
	})
}

// eachPenalized calls f once for each distinct token of the recent window,
// in the window's order, when the penalty is on.
func (s *Sampler) eachPenalized(recent []int32, f func(id int32)) {
	o := s.opts
	if o.RepeatPenalty <= 0 || o.RepeatPenalty == 1 {
		return
	}
	clear(s.seen)
	for _, id := range recent[max(0, len(recent)-o.RepeatWindow):] {
		if !s.seen[id] {
			s.seen[id] = true
			f(id)
		}
	}
}

// penalty lowers one logit: a positive one divided by the penalty, the
// others multiplied by it.
func (s *Sampler) penalty(l *float32) {
	if p := float32(s.opts.RepeatPenalty); *l > 0 {
		*l /= p
	} else {
		*l *= p
	}
}

// before orders token a before b: higher logit first, the lower id on ties.
func before(logits []float32, a, b int) bool {
	return logits[a] > logits[b] || (logits[a] == logits[b] && a < b)
}

// topN returns the n best tokens, best first, into dst (a bounded heap:
// O(V log n)).
func (s *Sampler) topN(logits []float32, n int, dst []int) []int {
	h := s.heap[:0]
	// h is a min-heap under before: h[0] is the worst kept token.
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			w := l
			if r := l + 1; r < len(h) && before(logits, h[l], h[r]) {
				w = r
			}
			if !before(logits, h[i], h[w]) {
				return
			}
			h[i], h[w] = h[w], h[i]
			i = w
		}
	}
	n = min(n, len(logits))
	for id := range n {
		h = append(h, id)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if !before(logits, h[p], h[i]) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
	}
	if n > 0 {
		// The rest of the scan: a later id goes before the worst kept one
		// only with a greater logit (on a tie the lower id, kept, wins), so
		// the loop compares with that logit alone, held in a register.
		worst := logits[h[0]]
		rest := logits[n:]
		for j, v := range rest {
			if v > worst {
				h[0] = n + j
				down(0)
				worst = logits[h[0]]
			}
		}
	}
	dst = append(dst[:0], h...)
	sort.Slice(dst, func(a, b int) bool { return before(logits, dst[a], dst[b]) })
	s.heap = h
	return dst
}

// Candidates returns the token ids that may be drawn from logits, best
// first, and their probabilities (summing to 1), after the penalty,
// temperature, top-k, min-p and top-p filters; greedy returns the argmax
// alone, and plain temperature sampling (no filter) every token. recent is
// the history the repetition penalty looks at; logits is modified by it.
func (s *Sampler) Candidates(logits []float32, recent []int32) ([]int, []float64) {
	s.penalize(logits, recent)
	return s.candidates(logits, len(logits))
}

// candidates is Candidates after the penalty, for logits that are either
// the whole vocabulary of full tokens or, in id order, a subset that holds
// every token the filters could keep (sampleFrom): the same operations in
// the same order either way.
func (s *Sampler) candidates(logits []float32, full int) ([]int, []float64) {
	o := s.opts
	if o.Temperature == 0 {
		s.one[0], s.unit[0] = argmax(logits), 1
		return s.one[:], s.unit[:]
	}
	K := full
	if o.TopK > 0 {
		K = min(o.TopK, K)
	}
	filtered := K < full || (o.TopP > 0 && o.TopP < 1) || o.MinP > 0
	if !filtered {
		s.idx = s.topN(logits, K, s.idx)
		return s.idx, s.softmax(logits, s.idx, 0)
	}
	// Widen the candidate set until it holds every token the filters keep.
	zK := -1.0 // normalizer over the whole top-k set, computed once when needed
	for m := min(K, 64); ; m = min(K, m*8) {
		s.idx = s.topN(logits, m, s.idx)
		z := 0.0 // m == K: the candidates are the whole set
		if m < K {
			if zK < 0 {
				zK = s.partition(logits, K, float64(logits[s.idx[0]]), full)
			}
			z = zK
		}
		probs := s.softmax(logits, s.idx, z)
		n := len(probs)
		if o.MinP > 0 {
			cut := o.MinP * probs[0]
			for n > 1 && probs[n-1] < cut {
				n--
			}
		}
		if o.TopP > 0 && o.TopP < 1 {
			var acc float64
			for i, p := range probs[:n] {
				acc += p
				if acc >= o.TopP {
					n = i + 1
					break
				}
			}
		}
		if n < len(probs) || m == K {
			idx, probs := s.idx[:n], probs[:n]
			var sum float64
			for _, p := range probs {
				sum += p
			}
			for i := range probs {
				probs[i] /= sum
			}
			return idx, probs
		}
	}
}

// softmax returns the probabilities of the tokens idx (best first) at the
// sampler's temperature, normalized by z, or by their own sum when z is 0.
func (s *Sampler) softmax(logits []float32, idx []int, z float64) []float64 {
	t := s.opts.Temperature
	mx := float64(logits[idx[0]])
	probs := s.probs[:0]
	var sum float64
	for _, i := range idx {
		p := math.Exp((float64(logits[i]) - mx) / t)
		probs = append(probs, p)
		sum += p
	}
	if z == 0 {
		z = sum
	}
	for i := range probs {
		probs[i] /= z
	}
	s.probs = probs
	return probs
}

// partition returns Σ exp((l - max)/T) over the k best tokens (all tokens
// when k is the vocabulary of full tokens), relative to the best token,
// whose logit is mx.
func (s *Sampler) partition(logits []float32, k int, mx float64, full int) float64 {
	t := s.opts.Temperature
	if k < full {
		var z float64
		for _, i := range s.topN(logits, k, nil) {
			z += math.Exp((float64(logits[i]) - mx) / t)
		}
		return z
	}
	floor := tailFloor(mx, t, len(logits))
	var z float64
	for _, l := range logits {
		if float64(l) > floor {
			z += math.Exp((float64(l) - mx) / t)
		}
	}
	return z
}

// tailFloor is the logit at or below which a token is left out of sampling
// (as if its probability were 0) when the best logit is mx, the
// temperature t and the vocabulary n tokens: such a token has p ≤ 1e-6/n
// of the best one's, so all of them together change the normalizer by
// under 1e-6 of itself. Skipping their exponentials makes sampling from a
// 262k vocabulary cost about a scan (BenchmarkSampleTopP: 3.4 → 0.73 ms a
// token on a 2-core EPYC).
func tailFloor(mx, t float64, n int) float64 {
	return mx - t*(math.Log(float64(n))+6*math.Ln10)
}

// argmax returns the first index of the greatest logit (NaNs are passed
// over, unless logits[0] is one). Its inner loop only skips what does not
// beat the best so far: written as one loop with the update inside, the
// compiler carries the best value through register moves on every
// iteration, twice as slow on a 262k vocabulary.
func argmax(logits []float32) int {
	best, bv := 0, logits[0]
	for i := 1; ; i++ {
		for i < len(logits) && !(logits[i] > bv) {
			i++
		}
		if i >= len(logits) {
			return best
		}
		best, bv = i, logits[i]
	}
}

// Sample draws the next token.
func (s *Sampler) Sample(logits []float32, recent []int32) int32 {
	o := s.opts
	if o.Temperature > 0 && o.TopK <= 0 && (o.TopP <= 0 || o.TopP >= 1) && o.MinP <= 0 {
		// Plain temperature sampling: one scan in id order, no selection.
		s.penalize(logits, recent)
		mx := float64(logits[argmax(logits)])
		z := s.partition(logits, len(logits), mx, len(logits))
		floor := tailFloor(mx, o.Temperature, len(logits))
		r := s.rng.Float64() * z
		last := 0
		for i, l := range logits {
			if float64(l) <= floor {
				continue
			}
			p := math.Exp((float64(l) - mx) / o.Temperature)
			if p > 0 {
				last = i
			}
			r -= p
			if r < 0 {
				return int32(i)
			}
		}
		return int32(last)
	}
	idx, probs := s.Candidates(logits, recent)
	return int32(idx[s.draw(probs)])
}

// draw picks a position of probs (summing to 1) with the generator; one
// candidate takes no draw.
func (s *Sampler) draw(probs []float64) int {
	if len(probs) == 1 {
		return 0
	}
	r := s.rng.Float64()
	for i, p := range probs {
		r -= p
		if r < 0 {
			return i
		}
	}
	return len(probs) - 1
}

// selectable returns how many of the best logits, picked where they lie
// (kernels.Selector), settle Sample's choice from a vocabulary of vocab
// tokens: 1 for greedy, top-k's k otherwise, and in both cases as many more
// as the repetition window holds when the penalty is on (it lowers logits,
// so a penalized token can only leave the best, letting the next ones in).
// 0: every logit counts (no top-k, or a penalty below 1, which raises
// logits), or more than kernels.MaxTopK.
func (s *Sampler) selectable(vocab int) int {
	o := s.opts
	n := 1
	if o.Temperature > 0 {
		if o.TopK <= 0 {
			return 0
		}
		n = o.TopK
	}
	if p := o.RepeatPenalty; p > 0 && p != 1 {
		if p < 1 {
			return 0
		}
		n += o.RepeatWindow
	}
	if n > kernels.MaxTopK || n > vocab {
		return 0
	}
	return n
}

// sampleFrom draws the next token as Sample would from all vocab logits,
// given the selectable(vocab) best of them: vals and ids, best first, as
// kernels.Selector writes them. recent is Sample's history.
func (s *Sampler) sampleFrom(vals []float32, ids []int32, vocab int, recent []int32) int32 {
	// In id order, so that ties fall as in the whole vocabulary.
	order := s.order[:0]
	for i := range ids {
		order = append(order, i)
	}
	sort.Slice(order, func(a, b int) bool { return ids[order[a]] < ids[order[b]] })
	sub, subIDs := s.sub[:0], s.subIDs[:0]
	for _, i := range order {
		sub, subIDs = append(sub, vals[i]), append(subIDs, ids[i])
	}
	s.order, s.sub, s.subIDs = order, sub, subIDs
	s.penalizeSub(sub, subIDs, recent)
	idx, probs := s.candidates(sub, vocab)
	return subIDs[idx[s.draw(probs)]]
}
