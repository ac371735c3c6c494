package metal

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Each op runs on the emulated Metal backend (bf16 activations) and on the
// CPU backend (f32), and both are compared with a scalar reference on random
// inputs.

func TestMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	type tc struct {
		bits, group int
		dt          dtype.DType // scales (quantized) or data (dense)
		n, k        int
	}
	cases := []tc{
		{2, 32, dtype.BF16, 20, 256}, {2, 128, dtype.F16, 12, 640},
		{3, 32, dtype.F16, 20, 640}, {3, 128, dtype.BF16, 9, 256},
		{4, 64, dtype.BF16, 20, 640}, {4, 32, dtype.F32, 9, 128},
		{5, 128, dtype.F32, 12, 256}, {5, 32, dtype.BF16, 20, 160},
		{6, 32, dtype.BF16, 12, 576}, {6, 64, dtype.F16, 20, 128},
		{8, 128, dtype.BF16, 20, 384}, {8, 64, dtype.F32, 7, 192},
		{0, 0, dtype.BF16, 20, 300}, {0, 0, dtype.F32, 12, 64}, {0, 0, dtype.F16, 9, 100},
		// Gemma 4 26B-A4B widths: hidden 2816 (5.5 blocks of 512), expert 704.
		{4, 64, dtype.BF16, 24, 2816}, {8, 64, dtype.BF16, 16, 2816}, {4, 64, dtype.BF16, 24, 704},
	}
	rowsFor := []int{1, 3, 9, 33}
	for i, c := range cases {
		var hw *hostWeight
		if c.bits == 0 {
			hw = newDense(r, 0, c.n, c.k, c.dt)
		} else {
			hw = newQuant(r, 0, c.n, c.k, c.bits, c.group, c.dt)
		}
		m := rowsFor[i%len(rowsFor)]
		if i%5 == 0 {
			m = 1
		}
		x := randVals(r, m*c.k, 1)
		want, mag := refMatMul(x, m, hw, nil)
		t.Run(name("bits%d_g%d_%s_M%d_N%d_K%d", c.bits, c.group, c.dt, m, c.n, c.k), func(t *testing.T) {
			for _, e := range envs(t) {
				w := hw.upload(t, e)
				xt := e.put(t, e.act, x, m, c.k)
				yt := e.put(t, e.act, nil, m, c.n)
				if err := e.b.MatMul(yt, xt, w); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name, e.get(t, yt), want, mag, outTol(e.act))
			}
		})
	}
}

func TestMatMulBothPathsAgree(t *testing.T) {
	// Every row count from 1 to 12 around the qmv/qmm switch, f32 output.
	r := rand.New(rand.NewPCG(2, 2))
	hw := newQuant(r, 0, 40, 256, 4, 64, dtype.BF16)
	for _, e := range gpus(t) {
		w := hw.upload(t, e)
		for m := 1; m <= 12; m++ {
			x := randVals(r, m*hw.k, 1)
			want, mag := refMatMul(x, m, hw, nil)
			xt := e.put(t, dtype.BF16, x, m, hw.k)
			yt := e.put(t, dtype.F32, nil, m, hw.n)
			if err := e.b.MatMul(yt, xt, w); err != nil {
				t.Fatal(err)
			}
			compare(t, name("%s M=%d", e.name, m), e.get(t, yt), want, mag, outTol(dtype.F32))
		}
	}
}

func TestMatMulExperts(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	const experts, n, k, m, slots = 5, 20, 256, 3, 2
	weights := []*hostWeight{
		newQuant(r, experts, n, k, 4, 64, dtype.BF16),
		newQuant(r, experts, n, k, 3, 32, dtype.F16),
		newQuant(r, experts, n, k, 8, 128, dtype.F32),
		newDense(r, experts, n, k, dtype.BF16),
	}
	ids := []float64{4, 1, 0, 4, 2, 3}
	for _, hw := range weights {
		for _, shared := range []bool{true, false} {
			xr := m * slots
			if shared {
				xr = m
			}
			x := randVals(r, xr*k, 1)
			want, mag := refMatMul(expandRows(x, k, m, slots, shared), m*slots, hw, func(p int) int { return int(ids[p]) })
			t.Run(name("bits%d_shared%v", hw.bits, shared), func(t *testing.T) {
				for _, e := range envs(t) {
					w := hw.upload(t, e)
					xt := e.put(t, e.act, x, xr, k)
					it := e.put(t, dtype.I32, ids, m, slots)
					yt := e.put(t, e.act, nil, m, slots, n)
					if err := e.b.MatMulExperts(yt, xt, w, it); err != nil {
						t.Fatalf("%s: %v", e.name, err)
					}
					compare(t, e.name, e.get(t, yt), want, mag, outTol(e.act))
				}
			})
		}
	}
}

// expandRows returns x as one row per (m, slot).
func expandRows(x []float64, k, m, slots int, shared bool) []float64 {
	if !shared {
		return x
	}
	out := make([]float64, 0, m*slots*k)
	for i := range m {
		for range slots {
			out = append(out, x[i*k:(i+1)*k]...)
		}
	}
	return out
}

func TestMatMulExpertsFusedViews(t *testing.T) {
	// Hugging Face's gate_up_proj [E, 2I, H]: gate and up are two views of one
	// buffer with an expert stride of 2I rows.
	r := rand.New(rand.NewPCG(4, 4))
	const experts, inter, k = 3, 12, 128
	hw := newQuant(r, experts, 2*inter, k, 4, 32, dtype.BF16)
	ids := []float64{2, 0}
	x := randVals(r, k, 1)
	for _, e := range envs(t) {
		full := hw.upload(t, e)
		for half := range 2 {
			w := *full
			w.N = inter
			kp := k * 4 / 32
			w.Data = view(full.Data, int64(half*inter*kp*4), dtype.U32, inter, kp)
			w.Scales = view(full.Scales, int64(half*inter*(k/32)*2), dtype.BF16, inter, k/32)
			w.Biases = view(full.Biases, int64(half*inter*(k/32)*2), dtype.BF16, inter, k/32)
			xt := e.put(t, e.act, x, 1, k)
			it := e.put(t, dtype.I32, ids, 1, 2)
			yt := e.put(t, e.act, nil, 1, 2, inter)
			if err := e.b.MatMulExperts(yt, xt, &w, it); err != nil {
				t.Fatalf("%s: %v", e.name, err)
			}
			want := make([]float64, 2*inter)
			mag := make([]float64, 2*inter)
			for j, id := range ids {
				for n := range inter {
					for c := range k {
						p := x[c] * hw.at(int(id), half*inter+n, c)
						want[j*inter+n] += p
						mag[j*inter+n] += math.Abs(p)
					}
				}
			}
			compare(t, name("%s half %d", e.name, half), e.get(t, yt), want, mag, outTol(e.act))
		}
	}
}

func TestMatMulExpertsBadIDGivesZeros(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	hw := newQuant(r, 2, 8, 64, 4, 64, dtype.BF16)
	for _, e := range gpus(t) {
		w := hw.upload(t, e)
		xt := e.put(t, dtype.BF16, randVals(r, 64, 1), 1, 64)
		it := e.put(t, dtype.I32, []float64{-1, 2}, 1, 2)
		yt := e.put(t, dtype.BF16, randVals(r, 16, 1), 1, 2, 8)
		if err := e.b.MatMulExperts(yt, xt, w, it); err != nil {
			t.Fatal(err)
		}
		for i, v := range e.get(t, yt) {
			if v != 0 {
				t.Fatalf("%s: y[%d] = %v for an out-of-range expert id, want 0", e.name, i, v)
			}
		}
	}
}

func TestEmbed(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	const vocab, k = 50, 128
	ids := []float64{3, 49, 0, 3, 17}
	scale := float32(math.Sqrt(k))
	for _, hw := range []*hostWeight{
		newQuant(r, 0, vocab, k, 4, 64, dtype.BF16),
		newQuant(r, 0, vocab, k, 6, 32, dtype.F32),
		newQuant(r, 0, vocab, k, 5, 128, dtype.F16),
		newDense(r, 0, vocab, k, dtype.BF16),
	} {
		want := make([]float64, len(ids)*k)
		for m, id := range ids {
			for c := range k {
				want[m*k+c] = float64(float32(hw.at(0, int(id), c)) * scale)
			}
		}
		t.Run(name("bits%d", hw.bits), func(t *testing.T) {
			for _, e := range envs(t) {
				w := hw.upload(t, e)
				it := e.put(t, dtype.I32, ids, len(ids))
				yt := e.put(t, e.act, nil, len(ids), k)
				if err := e.b.Embed(yt, w, it, scale); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name, e.get(t, yt), want, nil, outTol(e.act))
			}
		})
	}
}

func refRMSNorm(x, w []float64, rows, n int, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := range rows {
		ss := 0.0
		for _, v := range x[r*n : (r+1)*n] {
			ss += v * v
		}
		inv := 1 / math.Sqrt(ss/float64(n)+eps)
		for i := range n {
			y[r*n+i] = x[r*n+i] * inv
			if w != nil {
				y[r*n+i] *= w[i]
			}
		}
	}
	return y
}

func TestRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{64, 300, 1000} {
		for _, withW := range []bool{true, false} {
			for _, inPlace := range []bool{false, true} {
				const rows = 3
				x := randVals(r, rows*n, 2)
				var w []float64
				if withW {
					w = randVals(r, n, 1.5)
				}
				want := refRMSNorm(x, w, rows, n, 1e-6)
				t.Run(name("n%d_w%v_inplace%v", n, withW, inPlace), func(t *testing.T) {
					for _, e := range envs(t) {
						xt := e.put(t, e.act, x, rows, n)
						yt := xt
						if !inPlace {
							yt = e.put(t, e.act, nil, rows, n)
						}
						var wt kernels.Tensor
						if withW {
							wt = e.put(t, dtype.BF16, w, n)
						}
						if err := e.b.RMSNorm(yt, xt, wt, 1e-6); err != nil {
							t.Fatalf("%s: %v", e.name, err)
						}
						compare(t, e.name, e.get(t, yt), want, nil, outTol(e.act))
					}
				})
			}
		}
	}
}

func TestSoftmax(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for _, n := range []int{7, 100, 1000} {
		const rows = 3
		x := randVals(r, rows*n, 8)
		want := make([]float64, len(x))
		for i := range rows {
			mx := math.Inf(-1)
			for _, v := range x[i*n : (i+1)*n] {
				mx = math.Max(mx, v)
			}
			s := 0.0
			for j := range n {
				want[i*n+j] = math.Exp(x[i*n+j] - mx)
				s += want[i*n+j]
			}
			for j := range n {
				want[i*n+j] /= s
			}
		}
		t.Run(name("n%d", n), func(t *testing.T) {
			for _, e := range envs(t) {
				xt := e.put(t, e.act, x, rows, n)
				yt := e.put(t, dtype.F32, nil, rows, n)
				if err := e.b.Softmax(yt, xt); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name, e.get(t, yt), want, nil, tol{rel: 1e-5, abs: 1e-7})
			}
		})
	}
}

func TestRoPE(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	const rows, heads, d = 3, 2, 16
	pos := []float64{0, 7, 5000}
	inv := make([]float64, d/2)
	for i := range inv {
		if i < 6 { // proportional RoPE: the last pairs do not rotate
			inv[i] = float64(float32(math.Pow(10000, -2*float64(i)/d)))
		}
	}
	x := randVals(r, rows*heads*d, 1)
	want := make([]float64, len(x))
	mag := make([]float64, len(x))
	for t := range rows {
		for h := range heads {
			base := (t*heads + h) * d
			for i := range d / 2 {
				a := float64(float32(pos[t]) * float32(inv[i]))
				c, s := math.Cos(a), math.Sin(a)
				x1, x2 := x[base+i], x[base+i+d/2]
				want[base+i] = x1*c - x2*s
				want[base+i+d/2] = x2*c + x1*s
				mag[base+i] = math.Abs(x1) + math.Abs(x2)
				mag[base+i+d/2] = mag[base+i]
			}
		}
	}
	for _, e := range envs(t) {
		xt := e.put(t, e.act, x, rows, heads, d)
		pt := e.put(t, dtype.I32, pos, rows)
		ft := e.put(t, dtype.F32, inv, d/2)
		if err := e.b.RoPE(xt, pt, ft); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		tl := outTol(e.act)
		tl.mag = math.Max(tl.mag, 1e-5)
		compare(t, e.name, e.get(t, xt), want, mag, tl)
	}
}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	const n = 1000
	a := randVals(r, n, 4)
	c := randVals(r, n, 4)
	ops := []struct {
		name string
		run  func(b kernels.Backend, y, a, c kernels.Tensor) error
		ref  func(a, c float64) float64
	}{
		{"Add", func(b kernels.Backend, y, a, c kernels.Tensor) error { return b.Add(y, a, c) }, func(a, c float64) float64 { return a + c }},
		{"Scale", func(b kernels.Backend, y, a, _ kernels.Tensor) error { return b.Scale(y, a, 0.37) }, func(a, _ float64) float64 { return float64(float32(0.37)) * a }},
		{"Softcap", func(b kernels.Backend, y, a, _ kernels.Tensor) error { return b.Softcap(y, a, 3) }, func(a, _ float64) float64 { return 3 * math.Tanh(a/3) }},
		{"GeluTanhMul", func(b kernels.Backend, y, a, c kernels.Tensor) error { return b.GeluTanhMul(y, a, c) }, func(a, c float64) float64 { return gelu(a) * c }},
	}
	for _, op := range ops {
		want := make([]float64, n)
		for i := range want {
			want[i] = op.ref(a[i], c[i])
		}
		t.Run(op.name, func(t *testing.T) {
			for _, e := range envs(t) {
				at := e.put(t, e.act, a, n)
				ct := e.put(t, e.act, c, n)
				yt := e.put(t, e.act, nil, n)
				if err := op.run(e.b, yt, at, ct); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name, e.get(t, yt), want, nil, outTol(e.act))
				// In place: y is a.
				if err := op.run(e.b, at, at, ct); err != nil {
					t.Fatalf("%s in place: %v", e.name, err)
				}
				compare(t, e.name+" in place", e.get(t, at), want, nil, outTol(e.act))
			}
			// Mixed dtypes on the Metal backends: f16 and f32 inputs, f32 output.
			for _, e := range gpus(t) {
				at := e.put(t, dtype.F16, a, n)
				ct := e.put(t, dtype.F32, c, n)
				yt := e.put(t, dtype.F32, nil, n)
				if err := op.run(e.b, yt, at, ct); err != nil {
					t.Fatal(err)
				}
				compare(t, e.name+" mixed dtypes", e.get(t, yt), want, nil, outTol(dtype.F16))
			}
		})
	}
}

// refRouter returns the top k experts of softmax(logits) (ties: lower index)
// and their renormalized, scaled weights.
func refRouter(logits []float64, scale []float64, k int) ([]int, []float64) {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, v)
	}
	p := make([]float64, len(logits))
	s := 0.0
	for i, v := range logits {
		p[i] = math.Exp(v - mx)
		s += p[i]
	}
	idx := make([]int, len(p))
	for i := range idx {
		idx[i] = i
		p[i] /= s
	}
	sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
	ids := idx[:k]
	tot := 0.0
	for _, id := range ids {
		tot += p[id]
	}
	w := make([]float64, k)
	for j, id := range ids {
		w[j] = p[id] / tot
		if scale != nil {
			w[j] *= scale[id]
		}
	}
	return ids, w
}

func TestRouterTopK(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	const m, experts, k = 4, 40, 8
	logits := randVals(r, m*experts, 3)
	scale := randVals(r, experts, 2)
	for i := range experts {
		scale[i] = 0.5 + math.Abs(scale[i])
	}
	scale = rounded(dtype.BF16, scale)
	for _, withScale := range []bool{true, false} {
		var sc []float64
		if withScale {
			sc = scale
		}
		var wantIDs []float64
		var wantW []float64
		for i := range m {
			ids, w := refRouter(logits[i*experts:(i+1)*experts], sc, k)
			for j := range k {
				wantIDs = append(wantIDs, float64(ids[j]))
			}
			wantW = append(wantW, w...)
		}
		t.Run(name("scale%v", withScale), func(t *testing.T) {
			for _, e := range envs(t) {
				lt := e.put(t, dtype.F32, logits, m, experts)
				var st kernels.Tensor
				if withScale {
					st = e.put(t, dtype.BF16, scale, experts)
				}
				it := e.put(t, dtype.I32, nil, m, k)
				wt := e.put(t, dtype.F32, nil, m, k)
				if err := e.b.RouterTopK(wt, it, lt, st, k); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name+" ids", e.get(t, it), wantIDs, nil, tol{})
				compare(t, e.name+" weights", e.get(t, wt), wantW, nil, tol{rel: 1e-5, abs: 1e-7})
			}
		})
	}
	t.Run("ties", func(t *testing.T) {
		// Equal logits: the lower index wins each tie.
		logits := make([]float64, 70)
		for i := range logits {
			logits[i] = float64(i % 3)
		}
		ids, _ := refRouter(logits, nil, 5)
		for _, e := range envs(t) {
			lt := e.put(t, e.act, logits, 1, 70)
			it := e.put(t, dtype.I32, nil, 1, 5)
			wt := e.put(t, dtype.F32, nil, 1, 5)
			if err := e.b.RouterTopK(wt, it, lt, kernels.Tensor{}, 5); err != nil {
				t.Fatalf("%s: %v", e.name, err)
			}
			got := e.get(t, it)
			for j := range ids {
				if int(got[j]) != ids[j] {
					t.Errorf("%s: ids %v, want %v", e.name, got, ids)
					break
				}
			}
		}
	})
}

func TestStoreKV(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	const capacity, cols = 6, 16
	pos := []float64{4, 5, 6} // the ring wraps: slots 4, 5, 0
	src := randVals(r, len(pos)*cols, 1)
	init := randVals(r, capacity*cols, 1)
	want := append([]float64(nil), init...)
	for i, p := range pos {
		copy(want[int(p)%capacity*cols:], src[i*cols:(i+1)*cols])
	}
	for _, e := range envs(t) {
		ct := e.put(t, e.act, init, capacity, cols)
		st := e.put(t, e.act, src, len(pos), cols)
		pt := e.put(t, dtype.I32, pos, len(pos))
		if err := e.b.StoreKV(ct, st, pt); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		compare(t, e.name, e.get(t, ct), want, nil, tol{})
	}
}

// refAttention computes attention over ring caches [capacity, kvHeads·d].
func refAttention(q, kc, vc []float64, pos []float64, p kernels.AttentionParams, capacity int) (out, mag []float64) {
	d := p.HeadDim
	out = make([]float64, len(q))
	mag = make([]float64, len(q))
	for t, pf := range pos {
		ps := int(pf)
		start := 0
		if p.Window > 0 {
			start = max(0, ps-p.Window+1)
		}
		for h := range p.Heads {
			kvh := h / (p.Heads / p.KVHeads)
			qv := q[(t*p.Heads+h)*d : (t*p.Heads+h+1)*d]
			var scores []float64
			mx := math.Inf(-1)
			for j := start; j <= ps; j++ {
				kr := kc[(j%capacity)*p.KVHeads*d+kvh*d:]
				s := 0.0
				for i := range d {
					s += qv[i] * kr[i]
				}
				s *= float64(p.Scale)
				scores = append(scores, s)
				mx = math.Max(mx, s)
			}
			tot := 0.0
			for i := range scores {
				scores[i] = math.Exp(scores[i] - mx)
				tot += scores[i]
			}
			for i := range d {
				o, a := 0.0, 0.0
				for jj, j := 0, start; j <= ps; jj, j = jj+1, j+1 {
					v := vc[(j%capacity)*p.KVHeads*d+kvh*d+i]
					o += scores[jj] / tot * v
					a += scores[jj] / tot * math.Abs(v)
				}
				out[(t*p.Heads+h)*d+i] = o
				mag[(t*p.Heads+h)*d+i] = a
			}
		}
	}
	return out, mag
}

func TestAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 13))
	cases := []struct {
		name     string
		p        kernels.AttentionParams
		capacity int
		pos      []float64
	}{
		{"full_gqa", kernels.AttentionParams{Heads: 4, KVHeads: 2, HeadDim: 64, Scale: 1}, 16, []float64{9}},
		{"full_prefill", kernels.AttentionParams{Heads: 2, KVHeads: 2, HeadDim: 32, Scale: 0.125}, 8, []float64{2, 3, 4}},
		{"sliding_ring", kernels.AttentionParams{Heads: 2, KVHeads: 1, HeadDim: 80, Window: 6, Scale: 1}, 6, []float64{13}},
		{"sliding_prefill", kernels.AttentionParams{Heads: 2, KVHeads: 1, HeadDim: 48, Window: 3, Scale: 1}, 8, []float64{5, 6, 7}},
		{"head512", kernels.AttentionParams{Heads: 2, KVHeads: 1, HeadDim: 512, Scale: 1}, 8, []float64{6}},
		{"one_key", kernels.AttentionParams{Heads: 1, KVHeads: 1, HeadDim: 32, Scale: 1}, 4, []float64{0}},
		{"long_window", kernels.AttentionParams{Heads: 2, KVHeads: 1, HeadDim: 64, Window: 1024, Scale: 1}, 1024, []float64{1500}},
		{"long_full", kernels.AttentionParams{Heads: 2, KVHeads: 2, HeadDim: 64, Scale: 1}, 700, []float64{699}},
	}
	for _, c := range cases {
		kvcols := c.p.KVHeads * c.p.HeadDim
		q := randVals(r, len(c.pos)*c.p.Heads*c.p.HeadDim, 0.5)
		kc := randVals(r, c.capacity*kvcols, 0.5)
		vc := randVals(r, c.capacity*kvcols, 1)
		want, mag := refAttention(q, kc, vc, c.pos, c.p, c.capacity)
		t.Run(c.name, func(t *testing.T) {
			for _, e := range envs(t) {
				qt := e.put(t, e.act, q, len(c.pos), c.p.Heads*c.p.HeadDim)
				kt := e.put(t, e.act, kc, c.capacity, kvcols)
				vt := e.put(t, e.act, vc, c.capacity, kvcols)
				pt := e.put(t, dtype.I32, c.pos, len(c.pos))
				ot := e.put(t, e.act, nil, len(c.pos), c.p.Heads*c.p.HeadDim)
				if err := e.b.Attention(ot, qt, kt, vt, pt, c.p); err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				compare(t, e.name, e.get(t, ot), want, mag, outTol(e.act))
			}
		})
	}
}

func TestMoECombine(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 14))
	const m, k, n = 3, 4, 50
	x := randVals(r, m*k*n, 2)
	w := randVals(r, m*k, 1)
	want := make([]float64, m*n)
	mag := make([]float64, m*n)
	for i := range m {
		for j := range k {
			for c := range n {
				p := w[i*k+j] * x[(i*k+j)*n+c]
				want[i*n+c] += p
				mag[i*n+c] += math.Abs(p)
			}
		}
	}
	for _, e := range envs(t) {
		xt := e.put(t, e.act, x, m, k, n)
		wt := e.put(t, dtype.F32, w, m, k)
		yt := e.put(t, e.act, nil, m, n)
		if err := e.b.MoECombine(yt, xt, wt); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		compare(t, e.name, e.get(t, yt), want, mag, outTol(e.act))
	}
}

func TestRouterTopKNaNLogits(t *testing.T) {
	// NaN logits give unspecified experts but must not write out of bounds
	// (the emulator runs the kernel natively: a wild write would crash it).
	logits := make([]float64, 16)
	for i := range logits {
		logits[i] = math.NaN()
	}
	for _, e := range gpus(t) {
		lt := e.put(t, dtype.F32, logits, 1, 16)
		it := e.put(t, dtype.I32, nil, 1, 4)
		wt := e.put(t, dtype.F32, nil, 1, 4)
		if err := e.b.RouterTopK(wt, it, lt, kernels.Tensor{}, 4); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		if err := e.b.Sync(); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
	}
}
