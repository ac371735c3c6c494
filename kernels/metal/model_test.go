package metal

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// A Gemma-4-shaped MoE layer run through the kernels.Backend interface only,
// the way the model package drives a backend: weights wrapped from one host
// blob (as from a mapped checkpoint), a prefill of several tokens, then
// decode steps that wrap the sliding-window ring cache. The emulated Metal
// backend (bf16 activations) is compared with the CPU backend (f32).

const (
	mmHidden, mmHeads, mmKV, mmHD = 64, 2, 1, 32
	mmWindow, mmExperts, mmTopK   = 4, 4, 2
	mmInter, mmVocab              = 32, 50
)

// blob lays out weights in one host buffer.
type blob struct {
	data []byte
}

func (bl *blob) add(raw []byte) int64 {
	off := int64(len(bl.data))
	bl.data = append(bl.data, raw...)
	for len(bl.data)%16 != 0 {
		bl.data = append(bl.data, 0)
	}
	return off
}

// miniWeights are the layer's weights as offsets into the blob.
type miniWeights struct {
	blob                               blob
	quant                              map[string]*hostWeight
	qOff                               map[string][3]int64
	dense                              map[string]int64
	denseLen                           map[string]int
	invFreq                            []float64
	wq, wk, wv, wo, router, embed      string
	gate, up, down                     string
	inNorm, qNorm, kNorm, preNorm, fin string
	expertScale                        string
}

func newMiniWeights(r *rand.Rand) *miniWeights {
	m := &miniWeights{quant: map[string]*hostWeight{}, qOff: map[string][3]int64{}, dense: map[string]int64{}, denseLen: map[string]int{}}
	addQ := func(name string, experts, n, k, bits, group int) string {
		w := newQuant(r, experts, n, k, bits, group, dtype.BF16)
		m.quant[name] = w
		m.qOff[name] = [3]int64{m.blob.add(w.packed()), m.blob.add(encode(dtype.BF16, w.scales)), m.blob.add(encode(dtype.BF16, w.biases))}
		return name
	}
	addD := func(name string, vals []float64) string {
		m.dense[name] = m.blob.add(encode(dtype.BF16, vals))
		m.denseLen[name] = len(vals)
		return name
	}
	norm := func(n int) []float64 {
		v := randVals(r, n, 0.3)
		for i := range v {
			v[i] += 1
		}
		return rounded(dtype.BF16, v)
	}
	m.embed = addQ("embed", 0, mmVocab, mmHidden, 4, 32)
	m.wq = addQ("wq", 0, mmHeads*mmHD, mmHidden, 4, 32)
	m.wk = addQ("wk", 0, mmKV*mmHD, mmHidden, 4, 32)
	m.wv = addQ("wv", 0, mmKV*mmHD, mmHidden, 4, 32)
	m.wo = addQ("wo", 0, mmHidden, mmHeads*mmHD, 4, 32)
	m.router = addQ("router", 0, mmExperts, mmHidden, 8, 64)
	m.gate = addQ("gate", mmExperts, mmInter, mmHidden, 4, 32)
	m.up = addQ("up", mmExperts, mmInter, mmHidden, 4, 32)
	m.down = addQ("down", mmExperts, mmHidden, mmInter, 4, 32)
	m.inNorm = addD("in", norm(mmHidden))
	m.qNorm = addD("qn", norm(mmHD))
	m.kNorm = addD("kn", norm(mmHD))
	m.preNorm = addD("pre", norm(mmHidden))
	m.fin = addD("fin", norm(mmHidden))
	m.expertScale = addD("es", norm(mmExperts))
	m.invFreq = make([]float64, mmHD/2)
	for i := range m.invFreq {
		m.invFreq[i] = float64(float32(math.Pow(10000, -2*float64(i)/mmHD)))
	}
	return m
}

// weight returns the kernels.Weight of a quantized weight inside buf.
func (m *miniWeights) weight(buf kernels.Buffer, name string) *kernels.Weight {
	w, off := m.quant[name], m.qOff[name]
	kp := w.k * w.bits / 32
	kw := &kernels.Weight{
		Data:   kernels.Tensor{Buf: buf, Offset: off[0], DType: dtype.U32, Shape: []int{w.n, kp}},
		Scales: kernels.Tensor{Buf: buf, Offset: off[1], DType: dtype.BF16, Shape: []int{w.n, w.k / w.group}},
		Biases: kernels.Tensor{Buf: buf, Offset: off[2], DType: dtype.BF16, Shape: []int{w.n, w.k / w.group}},
		Bits:   w.bits, Group: w.group, N: w.n, K: w.k, Experts: w.experts,
	}
	if w.experts > 0 {
		kw.DataStride = int64(w.n * kp * 4)
		kw.GroupStride = int64(w.n * w.k / w.group * 2)
	}
	return kw
}

func (m *miniWeights) vec(buf kernels.Buffer, name string) kernels.Tensor {
	return kernels.Tensor{Buf: buf, Offset: m.dense[name], DType: dtype.BF16, Shape: []int{m.denseLen[name]}}
}

// runMini runs the steps (token ids per step) and returns the final
// probabilities of each step's last token.
func runMini(t *testing.T, e env, m *miniWeights, steps [][]int) [][]float64 {
	t.Helper()
	b := e.b
	buf, err := b.WrapHost(m.blob.data)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
	}
	act := e.act
	kc := e.put(t, act, nil, mmWindow, mmKV*mmHD)
	vc := e.put(t, act, nil, mmWindow, mmKV*mmHD)
	inv := e.put(t, dtype.F32, m.invFreq, mmHD/2)
	pos0 := 0
	var out [][]float64
	for _, toks := range steps {
		T := len(toks)
		ids := make([]float64, T)
		pos := make([]float64, T)
		for i, tk := range toks {
			ids[i], pos[i] = float64(tk), float64(pos0+i)
		}
		pos0 += T
		idT := e.put(t, dtype.I32, ids, T)
		posT := e.put(t, dtype.I32, pos, T)
		h := e.put(t, act, nil, T, mmHidden)
		must(b.Embed(h, m.weight(buf, m.embed), idT, float32(math.Sqrt(mmHidden))))
		a := e.put(t, act, nil, T, mmHidden)
		must(b.RMSNorm(a, h, m.vec(buf, m.inNorm), 1e-6))
		q := e.put(t, act, nil, T, mmHeads, mmHD)
		k := e.put(t, act, nil, T, mmKV, mmHD)
		v := e.put(t, act, nil, T, mmKV*mmHD)
		q2, _ := q.Reshape(T, mmHeads*mmHD)
		k2, _ := k.Reshape(T, mmKV*mmHD)
		must(b.MatMul(q2, a, m.weight(buf, m.wq)))
		must(b.MatMul(k2, a, m.weight(buf, m.wk)))
		must(b.MatMul(v, a, m.weight(buf, m.wv)))
		qr, _ := q.Reshape(T*mmHeads, mmHD)
		kr, _ := k.Reshape(T*mmKV, mmHD)
		must(b.RMSNorm(qr, qr, m.vec(buf, m.qNorm), 1e-6))
		must(b.RMSNorm(kr, kr, m.vec(buf, m.kNorm), 1e-6))
		vr, _ := v.Reshape(T*mmKV, mmHD)
		must(b.RMSNorm(vr, vr, kernels.Tensor{}, 1e-6))
		must(b.RoPE(q, posT, inv))
		must(b.RoPE(k, posT, inv))
		must(b.StoreKV(kc, k2, posT))
		must(b.StoreKV(vc, v, posT))
		o := e.put(t, act, nil, T, mmHeads*mmHD)
		must(b.Attention(o, q2, kc, vc, posT, kernels.AttentionParams{Heads: mmHeads, KVHeads: mmKV, HeadDim: mmHD, Window: mmWindow, Scale: 1}))
		o2 := e.put(t, act, nil, T, mmHidden)
		must(b.MatMul(o2, o, m.weight(buf, m.wo)))
		must(b.Add(h, h, o2))
		x := e.put(t, act, nil, T, mmHidden)
		must(b.RMSNorm(x, h, m.vec(buf, m.preNorm), 1e-6))
		rl := e.put(t, dtype.F32, nil, T, mmExperts)
		must(b.MatMul(rl, x, m.weight(buf, m.router)))
		rw := e.put(t, dtype.F32, nil, T, mmTopK)
		ri := e.put(t, dtype.I32, nil, T, mmTopK)
		must(b.RouterTopK(rw, ri, rl, m.vec(buf, m.expertScale), mmTopK))
		g := e.put(t, act, nil, T, mmTopK, mmInter)
		u := e.put(t, act, nil, T, mmTopK, mmInter)
		must(b.MatMulExperts(g, x, m.weight(buf, m.gate), ri))
		must(b.MatMulExperts(u, x, m.weight(buf, m.up), ri))
		must(b.GeluTanhMul(g, g, u))
		g2, _ := g.Reshape(T*mmTopK, mmInter)
		d := e.put(t, act, nil, T, mmTopK, mmHidden)
		must(b.MatMulExperts(d, g2, m.weight(buf, m.down), ri))
		ex := e.put(t, act, nil, T, mmHidden)
		must(b.MoECombine(ex, d, rw))
		must(b.Add(h, h, ex))
		last, _ := h.RowRange(T-1, T)
		n := e.put(t, act, nil, 1, mmHidden)
		must(b.RMSNorm(n, last, m.vec(buf, m.fin), 1e-6))
		logits := e.put(t, dtype.F32, nil, 1, mmVocab)
		must(b.MatMul(logits, n, m.weight(buf, m.embed)))
		must(b.Softcap(logits, logits, 30))
		probs := e.put(t, dtype.F32, nil, 1, mmVocab)
		must(b.Softmax(probs, logits))
		out = append(out, e.get(t, probs))
		for _, x := range []kernels.Tensor{idT, posT, h, a, q, k, v, o, o2, x, rl, rw, ri, g, u, d, ex, n, logits, probs} {
			b.Free(x)
		}
	}
	return out
}

func TestMiniModelMatchesCPU(t *testing.T) {
	r := rand.New(rand.NewPCG(30, 30))
	m := newMiniWeights(r)
	steps := [][]int{{3, 17, 42}, {7}, {7}, {49}, {0}, {23}}
	es := envs(t)
	want := runMini(t, es[len(es)-1], m, steps) // the CPU backend
	for _, e := range es[:len(es)-1] {
		got := runMini(t, e, m, steps)
		compareSteps(t, e.name, got, want)
	}
}

func compareSteps(t *testing.T, name string, results, cpu [][]float64) {
	for s := range cpu {
		got, want := results[s], cpu[s]
		maxDiff, maxP := 0.0, 0.0
		for i := range want {
			maxDiff = math.Max(maxDiff, math.Abs(got[i]-want[i]))
			maxP = math.Max(maxP, want[i])
		}
		t.Logf("%s step %d: max |p - p_cpu| = %.2g (max p %.3f)", name, s, maxDiff, maxP)
		// bf16 activations through a whole layer: a few percent of the
		// largest probability.
		if maxDiff > 0.01*maxP+1e-4 {
			t.Errorf("%s step %d: probabilities differ from the CPU backend's by %.3g (max p %.3g)", name, s, maxDiff, maxP)
		}
	}
}
