package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

func TestNewWithoutGPU(t *testing.T) {
	b, err := New()
	if err == nil {
		b.Close()
		t.Skip("a CUDA device is present")
	}
	if !strings.Contains(err.Error(), "cuda") {
		t.Fatalf("error does not say what failed: %v", err)
	}
	t.Logf("without a GPU, New says: %v", err)
}

// gpuTimer measures device time between two events on the backend's stream.
type gpuTimer struct {
	be         *Backend
	start, end *cuda.Event
}

func newTimer(tb testing.TB, be *Backend) *gpuTimer {
	if err := be.enter(); err != nil {
		tb.Fatal(err)
	}
	defer be.leave()
	s, err := cuda.NewEvent(true)
	if err != nil {
		tb.Fatal(err)
	}
	e, err := cuda.NewEvent(true)
	if err != nil {
		tb.Fatal(err)
	}
	return &gpuTimer{be, s, e}
}

func (g *gpuTimer) mark(ev *cuda.Event) error {
	if err := g.be.enter(); err != nil {
		return err
	}
	defer g.be.leave()
	return ev.Record(g.be.stream)
}

// elapsed returns the milliseconds between start and end after waiting.
func (g *gpuTimer) elapsed() (float64, error) {
	if err := g.be.enter(); err != nil {
		return 0, err
	}
	defer g.be.leave()
	if err := g.end.Sync(); err != nil {
		return 0, err
	}
	ms, err := cuda.Elapsed(g.start, g.end)
	return float64(ms), err
}

// timeLoop measures f, which enqueues one call on the device, two ways:
// host_us/op is the wall time to enqueue a call (the GPU running behind),
// and the device time per call comes from CUDA events around b.N replays of
// a graph holding 20 calls, so launch gaps do not count. It reports the
// bytes each call moves as GB/s and as the fraction of the DRAM peak.
func timeLoop(b *testing.B, be *Backend, bytesPerCall float64, f func(i int) error) {
	for i := range 5 {
		if err := f(i); err != nil {
			b.Fatal(err)
		}
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	const hostCalls = 200
	t0 := time.Now()
	for i := range hostCalls {
		if err := f(i); err != nil {
			b.Fatal(err)
		}
	}
	host := time.Since(t0)
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
	const reps = 20
	if err := be.BeginCapture(); err != nil {
		b.Fatal(err)
	}
	for i := range reps {
		if err := f(i); err != nil {
			be.EndCapture()
			b.Fatal(err)
		}
	}
	g, err := be.EndCapture()
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	if err := g.Launch(); err != nil {
		b.Fatal(err)
	}
	tm := newTimer(b, be)
	b.ResetTimer()
	tm.mark(tm.start)
	for range b.N {
		if err := g.Launch(); err != nil {
			b.Fatal(err)
		}
	}
	tm.mark(tm.end)
	ms, err := tm.elapsed()
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	sec := ms / 1e3 / float64(b.N*reps)
	gbs := bytesPerCall / sec / 1e9
	b.ReportMetric(host.Seconds()*1e6/hostCalls, "host_us/op")
	b.ReportMetric(sec*1e6, "us/call")
	b.ReportMetric(gbs, "GB/s")
	if peak := be.props.DRAMPeakGBs(); peak > 0 {
		b.ReportMetric(gbs/peak, "peak_frac")
	}
}

// randomBytes fills n bytes fast (xorshift), for weights whose values do not
// matter to the timing but must not be zeros.
func randomBytes(n int, seed uint64) []byte {
	out := make([]byte, n)
	s := seed | 1
	for i := 0; i+8 <= n; i += 8 {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		for j := range 8 {
			out[i+j] = byte(s >> (8 * j))
		}
	}
	return out
}

// benchWeights uploads copies of a random quantized [experts?, N, K] weight
// with bf16 scales, enough copies to exceed the L2 cache several times, and
// returns a view per copy and the bytes of one copy.
func benchWeights(b *testing.B, be *Backend, experts, N, K, bits, group, minBytes int) ([]*kernels.Weight, int) {
	key := [6]int{experts, N, K, bits, group, minBytes}
	if c, ok := weightCache[key]; ok {
		return c.ws, c.one
	}
	ws, one := makeBenchWeights(b, be, experts, N, K, bits, group, minBytes)
	weightCache[key] = cachedWeights{ws, one}
	return ws, one
}

type cachedWeights struct {
	ws  []*kernels.Weight
	one int
}

// weightCache keeps uploaded benchmark weights for the next variant (the
// bf16 test backend lives for the whole test binary).
var weightCache = map[[6]int]cachedWeights{}

func makeBenchWeights(b *testing.B, be *Backend, experts, N, K, bits, group, minBytes int) ([]*kernels.Weight, int) {
	e := max(experts, 1)
	dataB := e * N * K * bits / 8
	sB := e * N * (K / group) * 2
	one := dataB + 2*sB
	copies := max(1, (minBytes+one-1)/one)
	blob := randomBytes(one*copies, 12345)
	// scales and biases: small bf16 values (the random bytes would include NaNs)
	for c := range copies {
		base := c*one + dataB
		for i := 0; i < 2*sB; i += 2 {
			v := dtype.F32ToBF16(float32(int(blob[base+i])-128) * 1e-4)
			blob[base+i], blob[base+i+1] = byte(v), byte(v>>8)
		}
	}
	buf, err := be.WrapHost(blob)
	if err != nil {
		b.Fatal(err)
	}
	ws := make([]*kernels.Weight, copies)
	for c := range copies {
		off := int64(c * one)
		w := &kernels.Weight{Bits: bits, Group: group, N: N, K: K, Experts: experts,
			Data:   kernels.Tensor{Buf: buf, Offset: off, DType: dtype.U32, Shape: []int{N, K * bits / 32}},
			Scales: kernels.Tensor{Buf: buf, Offset: off + int64(dataB), DType: dtype.BF16, Shape: []int{N, K / group}},
			Biases: kernels.Tensor{Buf: buf, Offset: off + int64(dataB+sB), DType: dtype.BF16, Shape: []int{N, K / group}},
		}
		if experts > 0 {
			w.DataStride = int64(N * K * bits / 8)
			w.GroupStride = int64(N * (K / group) * 2)
		}
		if err := w.Validate(); err != nil {
			b.Fatal(err)
		}
		ws[c] = w
	}
	return ws, one
}

func benchBackend(b *testing.B) *Backend {
	_, bf := gpus(b)
	return bf
}

// BenchmarkQMV: one token times a quantized matrix (decode projections and
// the LM head), bf16 activations; 4-bit products through each kind of
// kernel (mvModes).
func BenchmarkQMV(b *testing.B) {
	for _, c := range []struct{ bits, N, K int }{
		{4, 8192, 2816}, {8, 8192, 2816}, {4, 2816, 8192}, {4, 262144, 2816}, {8, 262144, 2816},
	} {
		for _, m := range mvModes(c.bits) {
			b.Run(fmt.Sprintf("q%d_%dx%d%s", c.bits, c.N, c.K, m.name), func(b *testing.B) {
				be := benchBackend(b)
				defer m.set(be)()
				l2 := max(be.props.L2Bytes, 50<<20)
				ws, one := benchWeights(b, be, 0, c.N, c.K, c.bits, 64, 4*l2)
				x := put(b, be, dtype.BF16, randn(rand.New(rand.NewPCG(1, 1)), c.K, 1), 1, c.K)
				y, _ := be.Alloc(dtype.BF16, 1, c.N)
				timeLoop(b, be, float64(one+2*c.K+2*c.N), func(i int) error { return be.MatMul(y, x, ws[i%len(ws)]) })
			})
		}
	}
}

// mvMode is a choice of 4-bit matrix-vector kernel: the CUDA-core kernels
// (_cudacores) or the tensor-core one (_tc) wherever it applies. The
// backend's own choice is one of the two by size (qmvtMinBytes).
type mvMode struct {
	name string
	noTC bool
}

// set applies the mode to be and returns the function that undoes it.
func (m mvMode) set(be *Backend) func() {
	be.mvNoTC = m.noTC
	if m.name == "_tc" {
		be.mvKernel = mvTC
	}
	return func() { be.mvNoTC, be.mvKernel = false, "" }
}

// mvModes lists the modes worth timing at the given bits (the tensor-core
// kernel takes 4-bit weights only).
func mvModes(bits int) []mvMode {
	if bits != 4 {
		return []mvMode{{}}
	}
	return []mvMode{{"_cudacores", true}, {"_tc", false}}
}

// BenchmarkQMVVariants times each 4- and 8-bit matrix-vector kernel variant
// (rows per warp, pipeline depth) on the LM head and a mid-size projection.
func BenchmarkQMVVariants(b *testing.B) {
	for _, c := range []struct {
		bits, N, K int
		kernels    []string
	}{
		{4, 262144, 2816, qmvVariants[4]},
		{8, 262144, 2816, qmvVariants[8]},
		{4, 8192, 2816, qmvVariants[4]},
		{8, 8192, 2816, qmvVariants[8]},
		{4, 2816, 8192, qmvVariants[4]},
	} {
		for _, k := range c.kernels {
			b.Run(fmt.Sprintf("%s_%dx%d", k, c.N, c.K), func(b *testing.B) {
				be := benchBackend(b)
				l2 := max(be.props.L2Bytes, 50<<20)
				ws, one := benchWeights(b, be, 0, c.N, c.K, c.bits, 64, 4*l2)
				x := put(b, be, dtype.BF16, randn(rand.New(rand.NewPCG(1, 1)), c.K, 1), 1, c.K)
				y, _ := be.Alloc(dtype.BF16, 1, c.N)
				be.mvKernel = k
				defer func() { be.mvKernel = "" }()
				timeLoop(b, be, float64(one+2*c.K+2*c.N), func(i int) error { return be.MatMul(y, x, ws[i%len(ws)]) })
			})
		}
	}
}

// BenchmarkExpertMV: the 8-of-128 expert matvec of one decode token, the
// ids on the device (a fresh random set per call).
func BenchmarkExpertMV(b *testing.B) {
	type tc struct {
		bits, N, K int
		kernel     string // "" = the backend's choice
	}
	var tcs []tc
	for _, c := range []tc{{4, 704, 2816, ""}, {4, 2816, 704, ""}, {8, 704, 2816, ""}, {8, 2816, 704, ""}} {
		tcs = append(tcs, c)
		for _, k := range qmvVariants[c.bits] {
			if !strings.HasSuffix(k, "_r8") {
				c.kernel = k
				tcs = append(tcs, c)
			}
		}
	}
	for _, c := range tcs {
		b.Run(fmt.Sprintf("q%d_128x%dx%d_top8%s", c.bits, c.N, c.K, strings.TrimPrefix(c.kernel, fmt.Sprintf("qmv%d", c.bits))), func(b *testing.B) {
			be := benchBackend(b)
			const E, k, sets = 128, 8, 64
			ws, one := benchWeights(b, be, E, c.N, c.K, c.bits, 64, 0)
			w := ws[0]
			r := rand.New(rand.NewPCG(2, 2))
			views := randomExpertIDs(b, be, r, E, k, sets)
			x := put(b, be, dtype.BF16, randn(r, c.K, 1), 1, c.K)
			y, _ := be.Alloc(dtype.BF16, 1, k, c.N)
			perExpert := float64(one / E)
			be.mvKernel = c.kernel
			defer func() { be.mvKernel = "" }()
			timeLoop(b, be, k*perExpert, func(i int) error { return be.MatMulExperts(y, x, w, views[i%sets]) })
		})
	}
}

// randomExpertIDs uploads sets rows of k distinct expert ids out of E (a
// fresh random set a row, as decode routes each token) and returns a view
// of each row.
func randomExpertIDs(b *testing.B, be *Backend, r *rand.Rand, E, k, sets int) []kernels.Tensor {
	ids := make([]int32, sets*k)
	for s := range sets {
		for j, e := range r.Perm(E)[:k] {
			ids[s*k+j] = int32(e)
		}
	}
	idt := putRaw(b, be, dtype.I32, i32bytes(ids), sets, k)
	views := make([]kernels.Tensor, sets)
	for s := range views {
		views[s], _ = idt.RowRange(s, s+1)
	}
	return views
}

// BenchmarkCopy measures a 1 GiB device-to-device copy (bytes read +
// written), the practical bandwidth ceiling to compare the fractions above
// with. direct_GB/s times 20 plain cuMemcpyDtoDAsync calls with events (a
// copy node inside a graph runs differently).
func BenchmarkCopy(b *testing.B) {
	be := benchBackend(b)
	const n = 1 << 30
	src, _ := be.Alloc(dtype.U8, n)
	dst, _ := be.Alloc(dtype.U8, n)
	sp, dp := src.Buf.(*buffer).ptr, dst.Buf.(*buffer).ptr
	cp := func(int) error {
		if err := be.enter(); err != nil {
			return err
		}
		defer be.leave()
		return cuda.MemcpyDtoDAsync(dp, sp, n, be.stream)
	}
	timeLoop(b, be, 2*n, cp)
	tm := newTimer(b, be)
	tm.mark(tm.start)
	for i := range 20 {
		if err := cp(i); err != nil {
			b.Fatal(err)
		}
	}
	tm.mark(tm.end)
	ms, err := tm.elapsed()
	if err != nil {
		b.Fatal(err)
	}
	gbs := 20 * 2 * n / (ms / 1e3) / 1e9
	b.ReportMetric(gbs, "direct_GB/s")
	b.ReportMetric(gbs/be.props.DRAMPeakGBs(), "direct_peak_frac")
	be.Free(src)
	be.Free(dst)
}

// BenchmarkPrefillGEMM: prompt-sized products through the ways MatMul and
// MatMulExperts can run them: a 4-bit 2816→2112 projection (the dense MLP's
// gate) of 8, 16, 64 and 512 tokens, the sorted expert GEMM (tokens × 8 of
// 128 experts, 2816→704), and the router (f32 rows, 8-bit 2816→128).
// Variants: "plain" is the unpipelined gemm_tc (gemm_f32 for f32 rows),
// "pipelined" gemm_q4/gemm_q4b/gemm_q8 without split K, "matvec" the
// matrix-vector kernels, "auto" the backend's choice (matrix-vector launches
// where mvRows and mvPairs say so, split K for GEMMs of few tiles).
func BenchmarkPrefillGEMM(b *testing.B) {
	be := benchBackend(b)
	r := rand.New(rand.NewPCG(3, 3))
	modes := []struct {
		name   string
		plain  bool
		mvMode int
	}{{"plain", true, -1}, {"pipelined", false, -1}, {"matvec", false, 1}, {"auto", false, 0}}
	run := func(b *testing.B, mode int, f func(b *testing.B)) {
		be.gemmPlain, be.mvRowsMode, be.noSplitK = modes[mode].plain, modes[mode].mvMode, modes[mode].name == "pipelined"
		defer func() { be.gemmPlain, be.mvRowsMode, be.noSplitK = false, 0, false }()
		f(b)
	}
	for _, M := range []int{8, 16, 64, 512} {
		ws, one := benchWeights(b, be, 0, 2112, 2816, 4, 64, 0)
		x := put(b, be, dtype.BF16, randn(r, M*2816, 1), M, 2816)
		y, _ := be.Alloc(dtype.BF16, M, 2112)
		for i, m := range modes {
			b.Run(fmt.Sprintf("dense_q4_2816x2112_M%d/%s", M, m.name), func(b *testing.B) {
				run(b, i, func(b *testing.B) {
					timeLoop(b, be, float64(one), func(int) error { return be.MatMul(y, x, ws[0]) })
				})
			})
		}
	}
	for _, M := range []int{16, 32, 64, 128, 512} {
		ws, one := benchWeights(b, be, 128, 704, 2816, 4, 64, 0)
		ids := make([]int32, M*8)
		for m := range M {
			for j, e := range r.Perm(128)[:8] {
				ids[m*8+j] = int32(e)
			}
		}
		idt := putRaw(b, be, dtype.I32, i32bytes(ids), M, 8)
		x := put(b, be, dtype.BF16, randn(r, M*2816, 1), M, 2816)
		y, _ := be.Alloc(dtype.BF16, M, 8, 704)
		for i, m := range modes {
			if m.name == "plain" && M < 512 {
				continue
			}
			b.Run(fmt.Sprintf("experts_q4_128x704x2816_top8_M%d/%s", M, m.name), func(b *testing.B) {
				run(b, i, func(b *testing.B) {
					timeLoop(b, be, float64(one), func(int) error { return be.MatMulExperts(y, x, ws[0], idt) })
				})
			})
		}
	}
	for _, M := range []int{16, 512} {
		ws, one := benchWeights(b, be, 0, 128, 2816, 8, 64, 0)
		x := put(b, be, dtype.F32, randn(r, M*2816, 1), M, 2816)
		y, _ := be.Alloc(dtype.F32, M, 128)
		for i, m := range modes {
			if m.name == "pipelined" || m.name == "matvec" {
				continue
			}
			b.Run(fmt.Sprintf("router_q8_2816x128_f32_M%d/%s", M, m.name), func(b *testing.B) {
				run(b, i, func(b *testing.B) {
					timeLoop(b, be, float64(one), func(int) error { return be.MatMul(y, x, ws[0]) })
				})
			})
		}
	}
}

// BenchmarkHostOverhead: the host cost of one small op (bind, checks, launch).
func BenchmarkHostOverhead(b *testing.B) {
	be := benchBackend(b)
	x, _ := be.Alloc(dtype.BF16, 1, 2816)
	timeLoop(b, be, 4*2816, func(int) error { return be.Scale(x, x, 1.0001) })
}

// BenchmarkAttentionDecode: one query row over a cache (16 heads, bf16) of
// the decode shapes, the bytes being the K and V rows read; "whole": one
// block for all the heads of a kv head, as before attnHeadSplit.
func BenchmarkAttentionDecode(b *testing.B) {
	be := benchBackend(b)
	r := rand.New(rand.NewPCG(4, 4))
	const H = 16
	for _, s := range []struct {
		name           string
		KVH, D, P, win int
	}{
		{"8x256_8192keys", 8, 256, 8192, 0},        // (the benchmark's one shape before)
		{"sliding_1024window", 8, 256, 4096, 1024}, // the sliding layers: 16 splits
		{"global_640keys", 2, 512, 640, 0},         // a global layer after a 512-token prompt: 10 splits
		{"global_8192keys", 2, 512, 8192, 0},       // 128 splits
	} {
		kc := put(b, be, dtype.BF16, randn(r, s.P*s.KVH*s.D, 1), s.P, s.KVH*s.D)
		vc := put(b, be, dtype.BF16, randn(r, s.P*s.KVH*s.D, 1), s.P, s.KVH*s.D)
		q := put(b, be, dtype.BF16, randn(r, H*s.D, 1), 1, H*s.D)
		out, _ := be.Alloc(dtype.BF16, 1, H*s.D)
		pos := putRaw(b, be, dtype.I32, i32bytes([]int32{int32(s.P - 1)}), 1)
		p := kernels.AttentionParams{Heads: H, KVHeads: s.KVH, HeadDim: s.D, Window: s.win, Scale: 1}
		keys := s.P
		if s.win > 0 {
			keys = s.win
		}
		for _, whole := range []bool{false, true} {
			b.Run(s.name+map[bool]string{false: "", true: "/whole"}[whole], func(b *testing.B) {
				be.attnWhole = whole
				defer func() { be.attnWhole = false }()
				timeLoop(b, be, float64(2*keys*s.KVH*s.D*2), func(int) error { return be.Attention(out, q, kc, vc, pos, p) })
			})
		}
	}
}

// BenchmarkAttentionPrefill: 512 query rows at positions 0..511 of the
// sliding layers' shape (16 heads over 8 kv heads of 256, window 1024) and of
// the global layers' (16 over 2 of 512), bf16 caches; the tensor-core kernel
// ("tc") and the split-key kernel one row a block ("plain").
func BenchmarkAttentionPrefill(b *testing.B) {
	be := benchBackend(b)
	r := rand.New(rand.NewPCG(6, 6))
	const H, T = 16, 512
	for _, s := range []struct {
		name        string
		KVH, D, win int
	}{{"sliding", 8, 256, 1024}, {"global", 2, 512, 0}} {
		kc := put(b, be, dtype.BF16, randn(r, 1024*s.KVH*s.D, 1), 1024, s.KVH*s.D)
		vc := put(b, be, dtype.BF16, randn(r, 1024*s.KVH*s.D, 1), 1024, s.KVH*s.D)
		q := put(b, be, dtype.BF16, randn(r, T*H*s.D, 1), T, H*s.D)
		out, _ := be.Alloc(dtype.BF16, T, H*s.D)
		ps := make([]int32, T)
		for i := range ps {
			ps[i] = int32(i)
		}
		pos := putRaw(b, be, dtype.I32, i32bytes(ps), T)
		p := kernels.AttentionParams{Heads: H, KVHeads: s.KVH, HeadDim: s.D, Window: s.win, Scale: 1}
		for _, plain := range []bool{false, true} {
			mode := map[bool]string{false: "tc", true: "plain"}[plain]
			b.Run(s.name+"/"+mode, func(b *testing.B) {
				be.attnPlain = plain
				defer func() { be.attnPlain = false }()
				timeLoop(b, be, float64(2*T*s.KVH*s.D*2), func(int) error { return be.Attention(out, q, kc, vc, pos, p) })
			})
		}
	}
}

// decodeLayers is the setup of the decode-layer benchmarks: L layers of
// Gemma 4 26B-A4B weights (4-bit, group 64; 8-bit router) with their caches
// holding P positions, and the activations of one token (bf16).
type decodeLayers struct {
	layers                               []decodeLayer
	h, xn, a, o, qv, kv, vv, g, u, m, ec kernels.Tensor
	logits, ids, wts, eg, eu, ed         kernels.Tensor
	xq, xd, xr, xe                       kernels.Tensor // normed copies of h
	pos, invf, norm                      kernels.Tensor
	ap                                   kernels.AttentionParams
}

type decodeLayer struct {
	q, kw, v, o, gate, up, down, router *kernels.Weight
	eg, eu, ed                          *kernels.Weight
	kc, vc                              kernels.Tensor
}

const (
	dlL, dlHd, dlH, dlKVH, dlD, dlI, dlE, dlK, dlIe, dlP = 8, 2816, 16, 8, 256, 2112, 128, 8, 704, 4096
)

func newDecodeLayers(b *testing.B, be *Backend) *decodeLayers {
	r := rand.New(rand.NewPCG(5, 5))
	const (
		L, Hd, H, KVH, D, I, E, k, Ie, P = dlL, dlHd, dlH, dlKVH, dlD, dlI, dlE, dlK, dlIe, dlP
	)
	q4 := func(N, K int) *kernels.Weight {
		ws, _ := makeBenchWeights(b, be, 0, N, K, 4, 64, 0)
		return ws[0]
	}
	dl := &decodeLayers{layers: make([]decodeLayer, L)}
	for i := range dl.layers {
		l := &dl.layers[i]
		l.q, l.kw, l.v, l.o = q4(H*D, Hd), q4(KVH*D, Hd), q4(KVH*D, Hd), q4(Hd, H*D)
		l.gate, l.up, l.down = q4(I, Hd), q4(I, Hd), q4(Hd, I)
		rw, _ := makeBenchWeights(b, be, 0, E, Hd, 8, 64, 0)
		l.router = rw[0]
		eg, _ := makeBenchWeights(b, be, E, Ie, Hd, 4, 64, 0)
		eu, _ := makeBenchWeights(b, be, E, Ie, Hd, 4, 64, 0)
		ed, _ := makeBenchWeights(b, be, E, Hd, Ie, 4, 64, 0)
		l.eg, l.eu, l.ed = eg[0], eu[0], ed[0]
		l.kc = put(b, be, dtype.BF16, randn(r, P*KVH*D, 1), P, KVH*D)
		l.vc = put(b, be, dtype.BF16, randn(r, P*KVH*D, 1), P, KVH*D)
	}
	alloc := func(dt dtype.DType, shape ...int) kernels.Tensor {
		t, err := be.Alloc(dt, shape...)
		if err != nil {
			b.Fatal(err)
		}
		return t
	}
	dl.h = put(b, be, dtype.BF16, randn(r, Hd, 1), 1, Hd)
	dl.xn, dl.a, dl.o = alloc(dtype.BF16, 1, Hd), alloc(dtype.BF16, 1, H*D), alloc(dtype.BF16, 1, Hd)
	dl.qv, dl.kv, dl.vv = alloc(dtype.BF16, 1, H*D), alloc(dtype.BF16, 1, KVH*D), alloc(dtype.BF16, 1, KVH*D)
	dl.g, dl.u, dl.m = alloc(dtype.BF16, 1, I), alloc(dtype.BF16, 1, I), alloc(dtype.BF16, 1, Hd)
	dl.logits, dl.ids, dl.wts = alloc(dtype.F32, 1, E), alloc(dtype.I32, 1, k), alloc(dtype.F32, 1, k)
	dl.eg, dl.eu, dl.ed, dl.ec = alloc(dtype.BF16, 1, k, Ie), alloc(dtype.BF16, 1, k, Ie), alloc(dtype.BF16, 1, k, Hd), alloc(dtype.BF16, 1, Hd)
	dl.xq, dl.xd, dl.xr, dl.xe = alloc(dtype.BF16, 1, Hd), alloc(dtype.BF16, 1, Hd), alloc(dtype.F32, 1, Hd), alloc(dtype.BF16, 1, Hd)
	dl.pos = putRaw(b, be, dtype.I32, i32bytes([]int32{P - 1}), 1)
	inv := make([]float32, D/2)
	for i := range inv {
		inv[i] = float32(math.Pow(1e4, -2*float64(i)/D))
	}
	dl.invf = put(b, be, dtype.F32, inv, D/2)
	nv := make([]float32, Hd)
	for i := range nv {
		nv[i] = 1
	}
	dl.norm = put(b, be, dtype.F32, nv, Hd)
	dl.ap = kernels.AttentionParams{Heads: H, KVHeads: KVH, HeadDim: D, Window: 1024, Scale: 1}
	return dl
}

// timeLayers reports the device time per layer of step over all layers,
// issued op by op and replayed as one CUDA graph.
func timeLayers(b *testing.B, be *Backend, dl *decodeLayers, ops int, step func(l *decodeLayer) error) {
	all := func() error {
		for i := range dl.layers {
			if err := step(&dl.layers[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := all(); err != nil {
		b.Fatal(err)
	}
	be.Sync()
	L := len(dl.layers)
	tm := newTimer(b, be)
	t0 := time.Now()
	tm.mark(tm.start)
	if err := all(); err != nil {
		b.Fatal(err)
	}
	tm.mark(tm.end)
	host := time.Since(t0)
	direct, err := tm.elapsed()
	if err != nil {
		b.Fatal(err)
	}
	if err := be.BeginCapture(); err != nil {
		b.Fatal(err)
	}
	if err := all(); err != nil {
		be.EndCapture()
		b.Fatal(err)
	}
	gr, err := be.EndCapture()
	if err != nil {
		b.Fatal(err)
	}
	defer gr.Close()
	gr.Launch()
	b.ResetTimer()
	tm.mark(tm.start)
	for range b.N {
		if err := gr.Launch(); err != nil {
			b.Fatal(err)
		}
	}
	tm.mark(tm.end)
	graphMs, err := tm.elapsed()
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	perLayer := graphMs * 1e3 / float64(b.N*L)
	b.ReportMetric(direct*1e3/float64(L), "direct_us/layer")
	b.ReportMetric(host.Seconds()*1e6/float64(L*ops), "host_us/op")
	b.ReportMetric(perLayer, "graph_us/layer")
	b.ReportMetric(1e6/(30*perLayer), "tok/s_30layers_no_head")
}

// BenchmarkDecodeLayer runs the ops of one Gemma 4 26B-A4B decode layer
// (4-bit weights, group 64, bf16 activations; 8-bit router; attention over
// 4096 cached positions) for 8 layers with distinct weights, once issued op
// by op and once replayed as one CUDA graph. It reports device time per
// layer; 30 layers plus the LM head make a token. (A simplified layer: 26
// ops, fewer norms than the model's 37.)
func BenchmarkDecodeLayer(b *testing.B) {
	be := benchBackend(b)
	dl := newDecodeLayers(b, be)
	h, xn, a, o, qv, kv, vv := dl.h, dl.xn, dl.a, dl.o, dl.qv, dl.kv, dl.vv
	g, u, m, logits, ids, wts := dl.g, dl.u, dl.m, dl.logits, dl.ids, dl.wts
	eg, eu, ed, ec, pos, invf, ap := dl.eg, dl.eu, dl.ed, dl.ec, dl.pos, dl.invf, dl.ap
	const H, KVH, D, k = dlH, dlKVH, dlD, dlK
	step := func(l *decodeLayer) error {
		q3, _ := qv.Reshape(1, H, D)
		k3, _ := kv.Reshape(1, KVH, D)
		for _, f := range []func() error{
			func() error { return be.RMSNorm(xn, h, kernels.Tensor{}, 1e-6) },
			func() error { return be.MatMul(qv, xn, l.q) },
			func() error { return be.MatMul(kv, xn, l.kw) },
			func() error { return be.MatMul(vv, xn, l.v) },
			func() error { return be.RoPE(q3, pos, invf) },
			func() error { return be.RoPE(k3, pos, invf) },
			func() error { return be.StoreKV(l.kc, kv, pos) },
			func() error { return be.StoreKV(l.vc, vv, pos) },
			func() error { return be.Attention(a, qv, l.kc, l.vc, pos, ap) },
			func() error { return be.MatMul(o, a, l.o) },
			func() error { return be.Add(h, h, o) },
			func() error { return be.RMSNorm(xn, h, kernels.Tensor{}, 1e-6) },
			func() error { return be.MatMul(g, xn, l.gate) },
			func() error { return be.MatMul(u, xn, l.up) },
			func() error { return be.GeluTanhMul(g, g, u) },
			func() error { return be.MatMul(m, g, l.down) },
			func() error { return be.MatMul(logits, xn, l.router) },
			func() error { return be.RouterTopK(wts, ids, logits, kernels.Tensor{}, k) },
			func() error { return be.MatMulExperts(eg, xn, l.eg, ids) },
			func() error { return be.MatMulExperts(eu, xn, l.eu, ids) },
			func() error { return be.GeluTanhMul(eg, eg, eu) },
			func() error { return be.MatMulExperts(ed, eg, l.ed, ids) },
			func() error { return be.MoECombine(ec, ed, wts) },
			func() error { return be.Add(m, m, ec) },
			func() error { return be.Add(h, h, m) },
			func() error { return be.RMSNorm(h, h, kernels.Tensor{}, 1e-6) }, // keeps h bounded
		} {
			if err := f(); err != nil {
				return err
			}
		}
		return nil
	}
	timeLayers(b, be, dl, 26, step)
}

// layerOp is one op of the fused decode layer.
type layerOp struct {
	name string
	run  func(l *decodeLayer) error
}

// fusedLayerOps lists the ops of a fused MoE decode layer as the model runs
// them (model/fused.go): the dense MLP (dense_glu, dense_down) on the side
// stream beside the router and experts. The launches named in normed
// ("qkv", "dense", "router", "experts") take copies of h normed by the op
// before them (AddRMSNorm or the MoE epilogue, kernels.NormOut) as they are
// (NormParams.Off), as the model does for prefill; the others norm h in
// their staging.
func fusedLayerOps(be *Backend, dl *decodeLayers, normed ...string) []layerOp {
	h, a, o, qv, kv, vv := dl.h, dl.a, dl.o, dl.qv, dl.kv, dl.vv
	g, m, logits, ids, wts := dl.g, dl.m, dl.logits, dl.ids, dl.wts
	eg, ed, pos, invf, ap, nw := dl.eg, dl.ed, dl.pos, dl.invf, dl.ap, dl.norm
	const H, KVH, D, k, Hd = dlH, dlKVH, dlD, dlK, dlHd
	dnorm, _ := nw.RowRange(0, 1)
	dnorm.Shape = []int{D}
	np := kernels.NormParams{Weight: nw, Eps: 1e-6, XDType: dtype.BF16}
	rp := kernels.NormParams{Weight: nw, Eps: 1e-6, Scale: float32(1 / math.Sqrt(Hd)), XDType: dtype.F32}
	ep := kernels.MoEEpilogueParams{Post1: nw, Post2: nw, PostFF: nw, Eps: 1e-6, Scale: 0.999}
	// The input of each normed launch and its norm: h normed in the launch,
	// or the copy written before.
	var postAttn, next []kernels.NormOut
	input := func(name string, copy kernels.Tensor, p kernels.NormParams) (kernels.Tensor, kernels.NormParams) {
		if !slices.Contains(normed, name) {
			return h, p
		}
		if name == "qkv" {
			next = append(next, kernels.NormOut{Y: copy, Norm: p})
		} else {
			postAttn = append(postAttn, kernels.NormOut{Y: copy, Norm: p})
		}
		return copy, kernels.NormParams{Off: true}
	}
	xq, qp := input("qkv", dl.xq, np)
	xd, dp := input("dense", dl.xd, np)
	xr, rpn := input("router", dl.xr, rp)
	xe, epn := input("experts", dl.xe, np)
	return []layerOp{
		{"qkv", func(l *decodeLayer) error {
			return be.NormMatMul([]kernels.Tensor{qv, kv, vv}, []*kernels.Weight{l.q, l.kw, l.v}, xq, qp, 0)
		}},
		{"attn_prep", func(l *decodeLayer) error {
			return be.AttentionPrep(qv, kv, vv, kernels.AttentionPrepParams{QNorm: dnorm, KNorm: dnorm, Positions: pos,
				InvFreq: invf, KCache: l.kc, VCache: l.vc, Heads: H, KVHeads: KVH, HeadDim: D, Eps: 1e-6})
		}},
		{"attention", func(l *decodeLayer) error { return be.Attention(a, qv, l.kc, l.vc, pos, ap) }},
		{"o_proj", func(l *decodeLayer) error { return be.MatMul(o, a, l.o) }},
		{"add_rmsnorm", func(l *decodeLayer) error { return be.AddRMSNorm(h, o, nw, 1e-6, 1, postAttn...) }},
		{"dense_glu", func(l *decodeLayer) error { return be.NormGLU(g, l.gate, l.up, kernels.Tensor{}, xd, dp) }},
		{"dense_down", func(l *decodeLayer) error { return be.MatMul(m, g, l.down) }},
		{"router", func(l *decodeLayer) error {
			return be.NormMatMul([]kernels.Tensor{logits}, []*kernels.Weight{l.router}, xr, rpn, 0)
		}},
		{"router_topk", func(l *decodeLayer) error { return be.RouterTopK(wts, ids, logits, kernels.Tensor{}, k) }},
		{"experts_glu", func(l *decodeLayer) error { return be.NormGLU(eg, l.eg, l.eu, ids, xe, epn) }},
		{"experts_down", func(l *decodeLayer) error {
			egf, _ := eg.Reshape(k, dlIe)
			return be.MatMulExperts(ed, egf, l.ed, ids)
		}},
		{"moe_epilogue", func(l *decodeLayer) error { return be.MoEEpilogue(h, m, ed, wts, ep, next...) }},
	}
}

// fusedLayerStep runs the ops of one layer, all but skip, with dense_glu and
// dense_down on the side stream, joined before the op named join (the
// model: moe_epilogue; "": no side stream, the dense MLP before the
// router).
func fusedLayerStep(be *Backend, ops []layerOp, skip, join string) func(l *decodeLayer) error {
	return func(l *decodeLayer) error {
		run := func(names ...string) error {
			for _, op := range ops {
				if slices.Contains(names, op.name) && op.name != skip {
					if err := op.run(l); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := run("qkv", "attn_prep", "attention", "o_proj", "add_rmsnorm"); err != nil {
			return err
		}
		if join == "" {
			if err := run("dense_glu", "dense_down"); err != nil {
				return err
			}
		} else if err := be.Side(func() error { return run("dense_glu", "dense_down") }); err != nil {
			return err
		}
		for _, name := range []string{"router", "router_topk", "experts_glu", "experts_down", "moe_epilogue"} {
			if name == join {
				if err := be.Join(); err != nil {
					return err
				}
			}
			if err := run(name); err != nil {
				return errors.Join(err, be.Join())
			}
		}
		return nil
	}
}

// BenchmarkDecodeLayerFused runs the model's whole decode layer (every norm
// of it, the layer scalar) through the fused ops (kernels.Fuser) as the
// model does: 13 launches where the plain ops take 37, the dense MLP on the
// side stream, the 4-bit products on either kind of matrix-vector kernel
// (mvModes).
func BenchmarkDecodeLayerFused(b *testing.B) {
	be := benchBackend(b)
	dl := newDecodeLayers(b, be)
	ops := fusedLayerOps(be, dl)
	for _, m := range mvModes(4) {
		b.Run("mv"+m.name, func(b *testing.B) {
			defer m.set(be)()
			timeLayers(b, be, dl, 13, fusedLayerStep(be, ops, "", "moe_epilogue"))
		})
	}
}

// BenchmarkDecodeLayerChain times the fused decode layer once with every op
// and once without each op in turn (no_<op>; results are meaningless, the
// timing is not): the difference is what that op adds to the layer's chain
// of dependent launches, where ops overlap under programmatic dependent
// launch and the side stream.
func BenchmarkDecodeLayerChain(b *testing.B) {
	be := benchBackend(b)
	dl := newDecodeLayers(b, be)
	ops := fusedLayerOps(be, dl)
	b.Run("all", func(b *testing.B) { timeLayers(b, be, dl, 13, fusedLayerStep(be, ops, "", "moe_epilogue")) })
	for _, op := range ops {
		b.Run("no_"+op.name, func(b *testing.B) { timeLayers(b, be, dl, 12, fusedLayerStep(be, ops, op.name, "moe_epilogue")) })
	}
	// The normed copies of h written once (kernels.NormOut), as the model
	// runs without per-layer inputs.
	for _, normed := range [][]string{{"qkv", "dense", "router", "experts"}, {"qkv"}, {"dense"}, {"router"}, {"experts"}, {"router", "experts"}} {
		ops := fusedLayerOps(be, dl, normed...)
		b.Run("normed_"+strings.Join(normed, "_"), func(b *testing.B) {
			timeLayers(b, be, dl, 13, fusedLayerStep(be, ops, "", "moe_epilogue"))
		})
	}
	// Where the side stream joins the main one, and no side stream at all.
	for _, join := range []string{"experts_down", "experts_glu", ""} {
		name := "join_before_" + join
		if join == "" {
			name = "no_side_stream"
		}
		b.Run(name, func(b *testing.B) { timeLayers(b, be, dl, 13, fusedLayerStep(be, ops, "", join)) })
	}
}

// unitNorm returns the RMSNorm of the benchmarks' fused launches: a weight
// of K ones (f32), x stored as bf16.
func unitNorm(b *testing.B, be *Backend, K int) kernels.NormParams {
	nv := make([]float32, K)
	for i := range nv {
		nv[i] = 1
	}
	return kernels.NormParams{Weight: put(b, be, dtype.F32, nv, K), Eps: 1e-6, XDType: dtype.BF16}
}

// BenchmarkFusedMV: the fused matrix-vector launches of a decode layer
// (norm in the staging): the experts' gate and up (8 of 128, 2816→704,
// ids on the device), q/k/v in one launch, the dense gate and up, and the LM
// head with its softcap. Bytes count every weight read. The hot_ variants
// keep their weights in the L2 (one copy; 8 experts, all selected), to
// compare with the same launches reading from DRAM.
func BenchmarkFusedMV(b *testing.B) {
	be := benchBackend(b)
	r := rand.New(rand.NewPCG(6, 6))
	const Hd = 2816
	np := unitNorm(b, be, Hd)
	x := put(b, be, dtype.BF16, randn(r, Hd, 1), 1, Hd)
	l2 := max(be.props.L2Bytes, 50<<20)
	for _, m := range mvModes(4) {
		b.Run("experts_glu_q4_128x704x2816_top8"+m.name, func(b *testing.B) {
			defer m.set(be)()
			const E, k, sets = 128, 8, 64
			gs, one := benchWeights(b, be, E, 704, Hd, 4, 64, 0)
			us, _ := makeBenchWeights(b, be, E, 704, Hd, 4, 64, 0)
			views := randomExpertIDs(b, be, r, E, k, sets)
			y, _ := be.Alloc(dtype.BF16, 1, k, 704)
			timeLoop(b, be, 2*k*float64(one/E), func(i int) error { return be.NormGLU(y, gs[0], us[0], views[i%sets], x, np) })
		})
		b.Run("qkv_q4_8192x2816"+m.name, func(b *testing.B) {
			defer m.set(be)()
			qs, oq := benchWeights(b, be, 0, 4096, Hd, 4, 64, 4*l2)
			ks, ok := benchWeights(b, be, 0, 2048, Hd, 4, 64, 4*l2)
			vs, _ := makeBenchWeights(b, be, 0, 2048, Hd, 4, 64, 4*l2)
			q, _ := be.Alloc(dtype.BF16, 1, 4096)
			kk, _ := be.Alloc(dtype.BF16, 1, 2048)
			v, _ := be.Alloc(dtype.BF16, 1, 2048)
			n := min(len(qs), len(ks), len(vs))
			timeLoop(b, be, float64(oq+2*ok), func(i int) error {
				return be.NormMatMul([]kernels.Tensor{q, kk, v}, []*kernels.Weight{qs[i%n], ks[i%n], vs[i%n]}, x, np, 0)
			})
		})
		b.Run("dense_glu_q4_2112x2816"+m.name, func(b *testing.B) {
			defer m.set(be)()
			gs, one := benchWeights(b, be, 0, 2112, Hd, 4, 64, 4*l2)
			us, _ := makeBenchWeights(b, be, 0, 2112, Hd, 4, 64, 4*l2)
			y, _ := be.Alloc(dtype.BF16, 1, 2112)
			n := min(len(gs), len(us))
			timeLoop(b, be, 2*float64(one), func(i int) error { return be.NormGLU(y, gs[i%n], us[i%n], kernels.Tensor{}, x, np) })
		})
		if m.name == "_cudacores" { // weights that stay in the L2 (one copy; the experts: 8 of 8)
			b.Run("hot_experts_glu_q4_8x704x2816_top8", func(b *testing.B) {
				const E, k = 8, 8
				gs, one := benchWeights(b, be, E, 704, Hd, 4, 64, 0)
				us, _ := makeBenchWeights(b, be, E, 704, Hd, 4, 64, 0)
				views := randomExpertIDs(b, be, r, E, k, 1)
				y, _ := be.Alloc(dtype.BF16, 1, k, 704)
				timeLoop(b, be, 2*k*float64(one/E), func(i int) error { return be.NormGLU(y, gs[0], us[0], views[0], x, np) })
			})
			b.Run("hot_qkv_q4_8192x2816", func(b *testing.B) {
				qs, oq := benchWeights(b, be, 0, 4096, Hd, 4, 64, 0)
				ks, ok := benchWeights(b, be, 0, 2048, Hd, 4, 64, 0)
				vs, _ := makeBenchWeights(b, be, 0, 2048, Hd, 4, 64, 0)
				q, _ := be.Alloc(dtype.BF16, 1, 4096)
				kk, _ := be.Alloc(dtype.BF16, 1, 2048)
				v, _ := be.Alloc(dtype.BF16, 1, 2048)
				timeLoop(b, be, float64(oq+2*ok), func(i int) error {
					return be.NormMatMul([]kernels.Tensor{q, kk, v}, []*kernels.Weight{qs[0], ks[0], vs[0]}, x, np, 0)
				})
			})
		}
		b.Run("lm_head_q4_262144x2816_softcap"+m.name, func(b *testing.B) {
			defer m.set(be)()
			ws, one := benchWeights(b, be, 0, 262144, Hd, 4, 64, 4*l2)
			y, _ := be.Alloc(dtype.BF16, 1, 262144)
			timeLoop(b, be, float64(one), func(i int) error {
				return be.NormMatMul([]kernels.Tensor{y}, []*kernels.Weight{ws[i%len(ws)]}, x, np, 30)
			})
		})
	}
}

// BenchmarkLaunchAnatomy times launches in a graph of 20 (as timeLoop does)
// whose weights stay in the L2, over shapes, to separate what a decode
// launch costs whatever its size from what grows with it: a one-block
// launch on 16 values (scale_16) and a one-block RMSNorm of 2816; 4-bit
// matrix-vector products of N rows and K inputs with the input norm in
// the staging (normmv; normmv_tc on the tensor cores), the same kernel
// without the norm (fusedmv_nonorm) and the plain kernel (mv); the
// experts' gate and up for 1 to 8 selected experts (8 in the L2).
func BenchmarkLaunchAnatomy(b *testing.B) {
	be := benchBackend(b)
	r := rand.New(rand.NewPCG(7, 7))
	small := put(b, be, dtype.F32, randn(r, 16, 1), 16)
	b.Run("scale_16", func(b *testing.B) {
		timeLoop(b, be, 64, func(int) error { return be.Scale(small, small, 1) })
	})
	const Hd = 2816
	h := put(b, be, dtype.BF16, randn(r, Hd, 1), 1, Hd)
	hn, _ := be.Alloc(dtype.BF16, 1, Hd)
	b.Run("rmsnorm_2816", func(b *testing.B) {
		timeLoop(b, be, 4*Hd, func(int) error { return be.RMSNorm(hn, h, kernels.Tensor{}, 1e-6) })
	})
	for _, K := range []int{256, 1024, 2816, 5632} {
		np := unitNorm(b, be, K)
		x := put(b, be, dtype.BF16, randn(r, K, 1), 1, K)
		for _, N := range []int{128, 1024, 4096, 8192, 16384} {
			ws, one := benchWeights(b, be, 0, N, K, 4, 64, 0)
			y, _ := be.Alloc(dtype.BF16, 1, N)
			b.Run(fmt.Sprintf("normmv_N%d_K%d", N, K), func(b *testing.B) {
				timeLoop(b, be, float64(one), func(int) error {
					return be.NormMatMul([]kernels.Tensor{y}, []*kernels.Weight{ws[0]}, x, np, 0)
				})
			})
			b.Run(fmt.Sprintf("mv_N%d_K%d", N, K), func(b *testing.B) {
				timeLoop(b, be, float64(one), func(int) error { return be.MatMul(y, x, ws[0]) })
			})
			b.Run(fmt.Sprintf("fusedmv_nonorm_N%d_K%d", N, K), func(b *testing.B) {
				xp, _ := be.dev(x, "x")
				data, sc, bi, _ := be.weightPtrs(ws[0])
				yp, _ := be.dev(y, "y")
				segs := []mvSeg{{w: ws[0], data: data, sc: sc, bi: bi, y: y, yp: yp}}
				timeLoop(b, be, float64(one), func(int) error {
					return be.locked(func() error {
						return be.fusedMV(segs, false, x, xp, 1, mvNormArgs{off: true, scale: 1}, 0, 0, 0, 1, 0, 0)
					})
				})
			})
			b.Run(fmt.Sprintf("normmv_tc_N%d_K%d", N, K), func(b *testing.B) {
				defer mvModes(4)[1].set(be)()
				timeLoop(b, be, float64(one), func(int) error {
					return be.NormMatMul([]kernels.Tensor{y}, []*kernels.Weight{ws[0]}, x, np, 0)
				})
			})
		}
	}
	np := unitNorm(b, be, Hd)
	const E = 8
	gs, one := benchWeights(b, be, E, 704, Hd, 4, 64, 0)
	us, _ := makeBenchWeights(b, be, E, 704, Hd, 4, 64, 0)
	for _, k := range []int{1, 2, 4, 8} {
		ids := putRaw(b, be, dtype.I32, i32bytes([]int32{0, 1, 2, 3, 4, 5, 6, 7}[:k]), 1, k)
		y, _ := be.Alloc(dtype.BF16, 1, k, 704)
		b.Run(fmt.Sprintf("experts_glu_top%d", k), func(b *testing.B) {
			timeLoop(b, be, 2*float64(k)*float64(one/E), func(int) error { return be.NormGLU(y, gs[0], us[0], ids, h, np) })
		})
	}
}
