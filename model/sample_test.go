package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/gemmoe/gemmoe/kernels"
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

// bruteCandidates is the filter chain done the slow way: sort everything.
func bruteCandidates(logits []float32, o SampleOptions) ([]int, []float64) {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	if o.TopK > 0 && o.TopK < len(idx) {
		idx = idx[:o.TopK]
	}
	probs := make([]float64, len(idx))
	var sum float64
	for i, id := range idx {
		probs[i] = math.Exp((float64(logits[id]) - float64(logits[idx[0]])) / o.Temperature)
		sum += probs[i]
	}
	for i := range probs {
		probs[i] /= sum
	}
	n := len(probs)
	if o.MinP > 0 {
		for n > 1 && probs[n-1] < o.MinP*probs[0] {
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
	idx, probs = idx[:n], probs[:n]
	sum = 0
	for _, p := range probs {
		sum += p
	}
	for i := range probs {
		probs[i] /= sum
	}
	return idx, probs
}

// TestCandidatesLargeVocab: the widening partial selection keeps exactly the
// tokens a full sort keeps, on a 262,144-token vocabulary.
func TestCandidatesLargeVocab(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, 262144)
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * 3)
	}
	logits[7], logits[9] = 25, 25 // a tie at the top
	for _, o := range []SampleOptions{
		{Temperature: 1, TopP: 0.9}, {Temperature: 0.7, TopP: 0.95}, {Temperature: 1, MinP: 0.05},
		{Temperature: 2, TopP: 0.5, MinP: 0.001}, {Temperature: 1, TopK: 40}, {Temperature: 1, TopK: 5000, TopP: 0.99},
		{Temperature: 1.5, TopP: 0.999},
	} {
		wantIdx, wantP := bruteCandidates(logits, o)
		gotIdx, gotP := NewSampler(o).Candidates(append([]float32(nil), logits...), nil)
		if len(gotIdx) != len(wantIdx) {
			t.Fatalf("%+v: kept %d tokens, want %d", o, len(gotIdx), len(wantIdx))
		}
		for i := range gotIdx {
			if gotIdx[i] != wantIdx[i] || math.Abs(gotP[i]-wantP[i]) > 1e-12 {
				t.Fatalf("%+v: candidate %d is %d (p %g), want %d (p %g)", o, i, gotIdx[i], gotP[i], wantIdx[i], wantP[i])
			}
		}
	}
}

// BenchmarkSampleTopP samples with top-p 0.95 from a peaked distribution
// over 262,144 tokens, as a language model's usually is (a few dozen likely
// tokens over a broad tail).
func BenchmarkSampleTopP(b *testing.B) {
	benchSample(b, SampleOptions{Temperature: 0.8, TopP: 0.95, Seed: 1})
}

// BenchmarkSampleGreedy times greedy decoding's pick from a 262k vocabulary.
func BenchmarkSampleGreedy(b *testing.B) { benchSample(b, SampleOptions{}) }

// BenchmarkSampleTopK times Gemma's default sampling (temperature 1, top-k
// 64, top-p 0.95) from a 262k vocabulary.
func BenchmarkSampleTopK(b *testing.B) {
	benchSample(b, SampleOptions{Temperature: 1, TopK: 64, TopP: 0.95, Seed: 1})
}

// benchSample times Sample with opts on a 262k vocabulary of random logits
// with a few dominant tokens, counting the copy that restores them.
func benchSample(b *testing.B, opts SampleOptions) {
	r := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, 262144)
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * 2)
	}
	for i := range 40 {
		logits[r.IntN(len(logits))] = 18 + float32(i%7)
	}
	s := NewSampler(opts)
	work := make([]float32, len(logits))
	for b.Loop() {
		copy(work, logits)
		s.Sample(work, nil)
	}
}

// TestSamplerTail checks the bound of the sampler's tail cut: tokens at or
// below tailFloor are left out of the normalizer, and together they must
// weigh under 1e-6 of it, however many there are.
func TestSamplerTail(t *testing.T) {
	for _, tc := range []struct {
		n    int
		temp float64
	}{{1000, 1}, {262144, 0.7}, {262144, 2}} {
		s := NewSampler(SampleOptions{Temperature: tc.temp})
		logits := make([]float32, tc.n)
		floor := float32(tailFloor(0, tc.temp, tc.n))
		if float64(floor) > tailFloor(0, tc.temp, tc.n) {
			floor = math.Nextafter32(floor, -100)
		}
		for i := 1; i < tc.n; i++ {
			logits[i] = floor // the heaviest tokens the cut leaves out
		}
		var tail float64 // summed apart from the best token's 1, to stay exact
		for _, l := range logits[1:] {
			tail += math.Exp(float64(l) / tc.temp)
		}
		exact := 1 + tail
		got := s.partition(logits, tc.n, 0, tc.n)
		if rel := (exact - got) / exact; rel < 0 || rel >= 1e-6 {
			t.Errorf("n %d, T %g: normalizer %.12g, exact %.12g: relative loss %.3g (want [0, 1e-6))", tc.n, tc.temp, got, exact, rel)
		}
		logits[1] = math.Nextafter32(floor, 1) // just above the floor: counted
		if got := s.partition(logits, tc.n, 0, tc.n); got <= 1 {
			t.Errorf("n %d, T %g: a token above the floor was left out", tc.n, tc.temp)
		}
	}
}

// TestArgmaxTopN checks the vocabulary scans against their definitions on
// random logits with many ties: argmax is the first index of the greatest
// value (NaNs passed over, unless the first logit is one), and topN the n
// tokens that come first when every token is sorted by logit, lower id
// first on ties.
func TestArgmaxTopN(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	s := NewSampler(SampleOptions{Temperature: 1})
	for _, size := range []int{1, 2, 3, 5, 64, 65, 1000, 4099} {
		for trial := range 20 {
			logits := make([]float32, size)
			for i := range logits {
				logits[i] = float32(r.IntN(9)) // ties everywhere
			}
			want := 0
			for i, v := range logits {
				if v > logits[want] {
					want = i
				}
			}
			if got := argmax(logits); got != want {
				t.Fatalf("size %d trial %d: argmax %d, want %d", size, trial, got, want)
			}
			order := make([]int, size)
			for i := range order {
				order[i] = i
			}
			sort.SliceStable(order, func(a, b int) bool { return logits[order[a]] > logits[order[b]] })
			for _, n := range []int{1, 2, 7, 64, size} {
				got := s.topN(logits, n, nil)
				if k := min(n, size); !slices.Equal(got, order[:k]) {
					t.Fatalf("size %d trial %d: top %d %v, want %v", size, trial, n, got, order[:k])
				}
			}
			// NaNs: passed over by argmax, unless at index 0.
			if size > 2 {
				logits[size/2] = float32(math.NaN())
				m := 0
				for i, v := range logits {
					if v > logits[m] {
						m = i
					}
				}
				if got := argmax(logits); got != m {
					t.Fatalf("size %d with a NaN: argmax %d, want %d", size, got, m)
				}
				logits[0] = float32(math.NaN())
				if got := argmax(logits); got != 0 {
					t.Fatalf("size %d with logits[0] NaN: argmax %d, want 0", size, got)
				}
			}
		}
	}
}

// TestSampleFromBest checks that drawing from the selectable best logits
// (sampleFrom, as Generate does on a kernels.Selector backend) gives what
// drawing from all of them gives, draw after draw with the same seed, over
// random settings, histories and logits full of ties.
func TestSampleFromBest(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	const vocab = 3000
	tried := 0
	for trial := range 300 {
		o := SampleOptions{Seed: uint64(trial)}
		if r.IntN(4) > 0 {
			o.Temperature = 0.3 + 1.5*r.Float64()
			o.TopK = 1 + r.IntN(120)
			if r.IntN(2) == 0 {
				o.TopP = 0.5 + 0.5*r.Float64()
			}
			if r.IntN(3) == 0 {
				o.MinP = 0.2 * r.Float64()
			}
		}
		if r.IntN(2) == 0 {
			o.RepeatPenalty, o.RepeatWindow = 1+r.Float64(), 1+r.IntN(100)
		}
		all, best := NewSampler(o), NewSampler(o)
		n := best.selectable(vocab)
		if n == 0 {
			continue
		}
		tried++
		recent := make([]int32, r.IntN(200))
		for i := range recent {
			recent[i] = int32(r.IntN(vocab / 10)) // often among the best
		}
		for draw := range 5 {
			logits := make([]float32, vocab)
			for i := range logits {
				logits[i] = float32(r.IntN(40)) / 4 // ties everywhere
			}
			vals, ids := make([]float32, n), make([]int32, n)
			for j, i := range kernels.TopKOf(logits, n) {
				vals[j], ids[j] = logits[i], int32(i)
			}
			want := all.Sample(slices.Clone(logits), recent)
			if got := best.sampleFrom(vals, ids, vocab, recent); got != want {
				t.Fatalf("trial %d (%+v), draw %d: %d from the best %d logits, %d from all", trial, o, draw, got, n, want)
			}
		}
	}
	if tried < 100 {
		t.Fatalf("only %d settings could draw from the best logits", tried)
	}
}
