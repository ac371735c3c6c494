package metal

import (
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Threadgroup sizes of the kernels (fixed by the MSL code).
const (
	qmvThreads  = 64  // 2 SIMD-groups × 4 rows
	qmvRows     = 8   // output rows per qmv threadgroup
	qmmThreads  = 128 // 32×32 tile, 2×4 outputs per thread
	qmmTile     = 32
	attnThreads = 128 // 4 SIMD-groups
	eltThreads  = 256
	maxHeadDim  = 512 // attention: 16 values per lane
	maxExperts  = 512 // router: 16 logits per lane
	maxTopK     = 32  // router: one slot per lane
)

// weightArgs validates w and returns its data, scales and biases arguments
// (all experts of a 3D weight) and the constants that describe it.
func (b *Backend) weightArgs(op string, w *kernels.Weight) ([3]Arg, Consts, error) {
	var args [3]Arg
	var c Consts
	if w == nil {
		return args, c, b.errf(op, "no weight")
	}
	if err := w.Validate(); err != nil {
		return args, c, b.errf(op, "%v", err)
	}
	experts := int64(max(w.Experts, 1))
	span := func(t kernels.Tensor, stride int64, name string) (Arg, error) {
		a, err := b.in(op, name, t)
		if err != nil {
			return a, err
		}
		if w.Experts > 0 {
			if w.Experts > 1 && stride < t.Bytes() || stride%int64(t.DType.Size()) != 0 {
				return a, b.errf(op, "%s: expert stride %d bytes does not fit %v", name, stride, t)
			}
			if stride > math.MaxUint32 {
				return a, b.errf(op, "%s: expert stride %d bytes is over 4 GiB", name, stride)
			}
			a.Len = (experts-1)*stride + t.Bytes()
			if a.Offset+a.Len > t.Buf.Len() {
				return a, b.errf(op, "%s: %d experts of %v every %d bytes overrun the %d-byte buffer", name, experts, t, stride, t.Buf.Len())
			}
		}
		return a, nil
	}
	var err error
	if args[0], err = span(w.Data, w.DataStride, "weight data"); err != nil {
		return args, c, err
	}
	if !w.Quantized() {
		c.W = w.Data.DType
		args[1], args[2] = unused(args[0]), unused(args[0])
		return args, c, nil
	}
	if w.Scales.DType != w.Biases.DType {
		return args, c, b.errf(op, "scales are %s but biases are %s", w.Scales.DType, w.Biases.DType)
	}
	if args[1], err = span(w.Scales, w.GroupStride, "scales"); err != nil {
		return args, c, err
	}
	if args[2], err = span(w.Biases, w.GroupStride, "biases"); err != nil {
		return args, c, err
	}
	c.Bits, c.Group, c.S = w.Bits, w.Group, w.Scales.DType
	return args, c, nil
}

// MatMul computes y[M,N] = x[M,K]·Wᵀ: qmv for fewer than 8 rows, the tiled
// qmm from 8 rows on.
func (b *Backend) MatMul(y, x kernels.Tensor, w *kernels.Weight) error {
	const op = "MatMul"
	wa, c, err := b.weightArgs(op, w)
	if err != nil {
		return err
	}
	if w.Experts != 0 {
		return b.errf(op, "weight has %d experts (use MatMulExperts or Weight.Expert)", w.Experts)
	}
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	m := x.Rows()
	if !isFloat(x) || !isFloat(y) {
		return b.errf(op, "x %v and y %v must be F32, F16 or BF16", x, y)
	}
	if x.Cols() != w.K || y.Cols() != w.N || y.Rows() != m {
		return b.errf(op, "x %v · W[%d, %d]ᵀ does not give y %v", x, w.N, w.K, y)
	}
	if overlap(ya, xa) || overlap(ya, wa[0]) || overlap(ya, wa[1]) || overlap(ya, wa[2]) {
		return b.errf(op, "y %v overlaps an input", y)
	}
	if m == 0 {
		return nil
	}
	c.X, c.Y = x.DType, y.DType
	if m >= b.tiledMinRows {
		return b.run(&Dispatch{
			Kernel:  "qmm",
			Groups:  [3]int{ceilDiv(w.N, qmmTile), ceilDiv(m, qmmTile), 1},
			Threads: [3]int{qmmThreads, 1, 1},
			Args:    []Arg{wa[0], wa[1], wa[2], xa, ya, inline(qmmParams{M: int32(m), N: int32(w.N), K: int32(w.K)})},
			Consts:  c,
		})
	}
	return b.run(&Dispatch{
		Kernel:  "qmv",
		Groups:  [3]int{ceilDiv(w.N, qmvRows), m, 1},
		Threads: [3]int{qmvThreads, 1, 1},
		Args: []Arg{wa[0], wa[1], wa[2], xa, ya, unused(xa),
			inline(qmvParams{N: int32(w.N), K: int32(w.K), Slots: 1, XShared: 0})},
		Consts: c,
	})
}

// MatMulExperts computes y[M,k,N] = x[m]·W[ids[m,j]]ᵀ with one qmv dispatch
// over all (row, slot) pairs; the expert ids are read on the device and each
// expert addressed by its offset in the one 3D buffer.
func (b *Backend) MatMulExperts(y, x kernels.Tensor, w *kernels.Weight, ids kernels.Tensor) error {
	const op = "MatMulExperts"
	wa, c, err := b.weightArgs(op, w)
	if err != nil {
		return err
	}
	if w.Experts == 0 {
		return b.errf(op, "weight is 2D (use MatMul)")
	}
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	ia, err := b.in(op, "ids", ids)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	if ids.DType != dtype.I32 {
		return b.errf(op, "ids %v must be I32", ids)
	}
	m, k := ids.Rows(), ids.Cols()
	if !isFloat(x) || !isFloat(y) {
		return b.errf(op, "x %v and y %v must be F32, F16 or BF16", x, y)
	}
	if x.Cols() != w.K || (x.Rows() != m && x.Rows() != m*k) {
		return b.errf(op, "x %v does not match ids %v and K=%d (want [M, K] or [M·k, K])", x, ids, w.K)
	}
	if y.Numel() != m*k*w.N || y.Cols() != w.N {
		return b.errf(op, "y %v is not [%d, %d, %d]", y, m, k, w.N)
	}
	if overlap(ya, xa) || overlap(ya, ia) || overlap(ya, wa[0]) || overlap(ya, wa[1]) || overlap(ya, wa[2]) {
		return b.errf(op, "y %v overlaps an input", y)
	}
	if m*k == 0 {
		return nil
	}
	shared := int32(0)
	if x.Rows() == m {
		shared = 1
	}
	c.X, c.Y = x.DType, y.DType
	return b.run(&Dispatch{
		Kernel:  "qmv",
		Groups:  [3]int{ceilDiv(w.N, qmvRows), m * k, 1},
		Threads: [3]int{qmvThreads, 1, 1},
		Args: []Arg{wa[0], wa[1], wa[2], xa, ya, ia,
			inline(qmvParams{N: int32(w.N), K: int32(w.K), Slots: int32(k), XShared: shared, Experts: int32(w.Experts),
				WStride: uint32(w.DataStride), SStride: uint32(w.GroupStride)})},
		Consts: c,
	})
}

// MoECombine computes y[M,N] = Σ_j weights[m,j]·x[m,j,:].
func (b *Backend) MoECombine(y, x, weights kernels.Tensor) error {
	const op = "MoECombine"
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	wa, err := b.in(op, "weights", weights)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	if weights.DType != dtype.F32 {
		return b.errf(op, "weights %v must be F32", weights)
	}
	m, k, n := weights.Rows(), weights.Cols(), y.Cols()
	if !isFloat(x) || !isFloat(y) || y.Rows() != m || x.Cols() != n || x.Numel() != m*k*n {
		return b.errf(op, "x %v, weights %v and y %v do not agree (want x [M,k,N], weights [M,k], y [M,N])", x, weights, y)
	}
	if overlap(ya, xa) || overlap(ya, wa) {
		return b.errf(op, "y %v overlaps an input", y)
	}
	if m*n == 0 {
		return nil
	}
	t := min(eltThreads, ceilDiv(n, 32)*32)
	return b.run(&Dispatch{
		Kernel:  "moe_combine",
		Groups:  [3]int{ceilDiv(n, t), m, 1},
		Threads: [3]int{t, 1, 1},
		Args:    []Arg{xa, wa, ya, inline(combineParams{M: int32(m), N: int32(n), Slots: int32(k)})},
		Consts:  Consts{X: x.DType, Y: y.DType},
	})
}

// Embed gathers y[m,:] = scale·table[ids[m],:] (dequantized).
func (b *Backend) Embed(y kernels.Tensor, table *kernels.Weight, ids kernels.Tensor, scale float32) error {
	const op = "Embed"
	wa, c, err := b.weightArgs(op, table)
	if err != nil {
		return err
	}
	if table.Experts != 0 {
		return b.errf(op, "table has %d experts", table.Experts)
	}
	ia, err := b.in(op, "ids", ids)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	if ids.DType != dtype.I32 {
		return b.errf(op, "ids %v must be I32", ids)
	}
	m := ids.Numel()
	if !isFloat(y) || y.Rows() != m || y.Cols() != table.K {
		return b.errf(op, "y %v is not [%d, %d]", y, m, table.K)
	}
	if overlap(ya, ia) || overlap(ya, wa[0]) || overlap(ya, wa[1]) || overlap(ya, wa[2]) {
		return b.errf(op, "y %v overlaps an input", y)
	}
	if m == 0 {
		return nil
	}
	c.Y = y.DType
	t := min(eltThreads, ceilDiv(table.K, 32)*32)
	return b.run(&Dispatch{
		Kernel:  "embed",
		Groups:  [3]int{ceilDiv(table.K, t), m, 1},
		Threads: [3]int{t, 1, 1},
		Args:    []Arg{wa[0], wa[1], wa[2], ia, ya, inline(embedParams{Vocab: int32(table.N), K: int32(table.K), M: int32(m), Scale: scale})},
		Consts:  c,
	})
}

// RMSNorm computes y = x·(mean(x²)+eps)^-½·w per row (w zero: no weight).
func (b *Backend) RMSNorm(y, x, w kernels.Tensor, eps float32) error {
	const op = "RMSNorm"
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	n := x.Cols()
	if !isFloat(x) || !isFloat(y) || y.Numel() != x.Numel() || y.Cols() != n {
		return b.errf(op, "x %v and y %v must be float tensors of one shape", x, y)
	}
	if overlap(ya, xa) && !sameRange(ya, xa) {
		return b.errf(op, "y %v partly overlaps x", y)
	}
	wa, hasW := unused(xa), int32(0)
	var wdt dtype.DType
	if !w.IsZero() {
		if wa, err = b.in(op, "w", w); err != nil {
			return err
		}
		if !isFloat(w) || w.Numel() != n {
			return b.errf(op, "weight %v does not match rows of %d", w, n)
		}
		if overlap(ya, wa) {
			return b.errf(op, "y %v overlaps the weight", y)
		}
		hasW, wdt = 1, w.DType
	}
	if x.Numel() == 0 {
		return nil
	}
	return b.run(&Dispatch{
		Kernel:  "rms_norm",
		Groups:  [3]int{x.Rows(), 1, 1},
		Threads: [3]int{rowThreads(n), 1, 1},
		Args:    []Arg{xa, wa, ya, inline(rowParams{N: int32(n), Eps: eps, HasWeight: hasW})},
		Consts:  Consts{X: x.DType, W: wdt, Y: y.DType},
	})
}

// Softmax normalizes each row of x (f32 inside).
func (b *Backend) Softmax(y, x kernels.Tensor) error {
	const op = "Softmax"
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	n := x.Cols()
	if !isFloat(x) || !isFloat(y) || y.Numel() != x.Numel() || y.Cols() != n {
		return b.errf(op, "x %v and y %v must be float tensors of one shape", x, y)
	}
	if overlap(ya, xa) && !sameRange(ya, xa) {
		return b.errf(op, "y %v partly overlaps x", y)
	}
	if x.Numel() == 0 {
		return nil
	}
	return b.run(&Dispatch{
		Kernel:  "softmax",
		Groups:  [3]int{x.Rows(), 1, 1},
		Threads: [3]int{rowThreads(n), 1, 1},
		Args:    []Arg{xa, ya, inline(rowParams{N: int32(n)})},
		Consts:  Consts{X: x.DType, Y: y.DType},
	})
}

// RoPE rotates x [T, heads, D] in place by positions[t]·invFreq[i].
func (b *Backend) RoPE(x, positions, invFreq kernels.Tensor) error {
	const op = "RoPE"
	xa, err := b.out(op, "x", x)
	if err != nil {
		return err
	}
	pa, err := b.in(op, "positions", positions)
	if err != nil {
		return err
	}
	fa, err := b.in(op, "invFreq", invFreq)
	if err != nil {
		return err
	}
	if positions.DType != dtype.I32 || invFreq.DType != dtype.F32 || !isFloat(x) {
		return b.errf(op, "want float x, I32 positions and F32 invFreq; got %v, %v, %v", x, positions, invFreq)
	}
	half, t := invFreq.Numel(), positions.Numel()
	if half == 0 || t == 0 || x.Numel()%(t*2*half) != 0 || x.Numel() == 0 {
		return b.errf(op, "x %v is not [T=%d, heads, D=%d]", x, t, 2*half)
	}
	if overlap(xa, pa) || overlap(xa, fa) {
		return b.errf(op, "x %v overlaps positions or invFreq", x)
	}
	heads := x.Numel() / (t * 2 * half)
	total := t * heads * half
	return b.run(&Dispatch{
		Kernel:  "rope",
		Groups:  [3]int{ceilDiv(total, eltThreads), 1, 1},
		Threads: [3]int{eltThreads, 1, 1},
		Args:    []Arg{xa, pa, fa, inline(ropeParams{Rows: int32(t), Heads: int32(heads), HalfDim: int32(half)})},
		Consts:  Consts{X: x.DType},
	})
}

// elementwise runs one of the elementwise kernels over n = y.Numel() elements.
func (b *Backend) elementwise(op, kernel string, y kernels.Tensor, s float32, ins ...kernels.Tensor) error {
	ya, err := b.out(op, "y", y)
	if err != nil {
		return err
	}
	if !isFloat(y) {
		return b.errf(op, "y %v must be F32, F16 or BF16", y)
	}
	n := y.Numel()
	if n > math.MaxUint32 {
		return b.errf(op, "%d elements (at most 2³²-1)", n)
	}
	args := make([]Arg, 0, len(ins)+2)
	c := Consts{Y: y.DType}
	for i, t := range ins {
		a, err := b.in(op, "input", t)
		if err != nil {
			return err
		}
		if !isFloat(t) || t.Numel() != n {
			return b.errf(op, "input %v does not match y %v", t, y)
		}
		if overlap(ya, a) && !sameRange(ya, a) {
			return b.errf(op, "y %v partly overlaps input %v", y, t)
		}
		if i == 0 {
			c.X = t.DType
		} else {
			c.W = t.DType
		}
		args = append(args, a)
	}
	if n == 0 {
		return nil
	}
	args = append(args, ya, inline(eltParams{N: uint32(n), S: s}))
	return b.run(&Dispatch{
		Kernel:  kernel,
		Groups:  [3]int{ceilDiv(n, eltThreads), 1, 1},
		Threads: [3]int{eltThreads, 1, 1},
		Args:    args,
		Consts:  c,
	})
}

// GeluTanhMul computes y = gelu_tanh(gate)·up.
func (b *Backend) GeluTanhMul(y, gate, up kernels.Tensor) error {
	return b.elementwise("GeluTanhMul", "gelu_mul", y, 0, gate, up)
}

// Add computes y = a + b.
func (b *Backend) Add(y, a, c kernels.Tensor) error {
	return b.elementwise("Add", "add", y, 0, a, c)
}

// Scale computes y = s·x.
func (b *Backend) Scale(y, x kernels.Tensor, s float32) error {
	return b.elementwise("Scale", "scale", y, s, x)
}

// Softcap computes y = c·tanh(x/c).
func (b *Backend) Softcap(y, x kernels.Tensor, c float32) error {
	if c == 0 || math.IsNaN(float64(c)) || math.IsInf(float64(c), 0) {
		return b.errf("Softcap", "cap %v (want a finite non-zero value)", c)
	}
	return b.elementwise("Softcap", "softcap", y, c, x)
}

// RouterTopK writes the top k experts of softmax(logits) per row and their
// renormalized, per-expert-scaled probabilities.
func (b *Backend) RouterTopK(weights, ids, logits, perExpertScale kernels.Tensor, k int) error {
	const op = "RouterTopK"
	la, err := b.in(op, "logits", logits)
	if err != nil {
		return err
	}
	ia, err := b.out(op, "ids", ids)
	if err != nil {
		return err
	}
	wa, err := b.out(op, "weights", weights)
	if err != nil {
		return err
	}
	m, e := logits.Rows(), logits.Cols()
	if !isFloat(logits) || e == 0 || e > maxExperts {
		return b.errf(op, "logits %v (want float [M, E] with 1 ≤ E ≤ %d)", logits, maxExperts)
	}
	if k < 1 || k > e || k > maxTopK {
		return b.errf(op, "k=%d (want 1 ≤ k ≤ min(E=%d, %d))", k, e, maxTopK)
	}
	if ids.DType != dtype.I32 || ids.Numel() != m*k || weights.DType != dtype.F32 || weights.Numel() != m*k {
		return b.errf(op, "ids %v and weights %v must be I32 and F32 [%d, %d]", ids, weights, m, k)
	}
	if overlap(ia, wa) || overlap(ia, la) || overlap(wa, la) {
		return b.errf(op, "outputs overlap")
	}
	sa, has := unused(la), int32(0)
	var sdt dtype.DType
	if !perExpertScale.IsZero() {
		if sa, err = b.in(op, "perExpertScale", perExpertScale); err != nil {
			return err
		}
		if !isFloat(perExpertScale) || perExpertScale.Numel() != e {
			return b.errf(op, "perExpertScale %v is not [%d]", perExpertScale, e)
		}
		has, sdt = 1, perExpertScale.DType
	}
	if m == 0 {
		return nil
	}
	return b.run(&Dispatch{
		Kernel:  "router_topk",
		Groups:  [3]int{m, 1, 1},
		Threads: [3]int{32, 1, 1},
		Args:    []Arg{la, sa, ia, wa, inline(routerParams{Experts: int32(e), K: int32(k), HasScale: has})},
		Consts:  Consts{X: logits.DType, S: sdt},
	})
}

// StoreKV writes src [T, C] into cache slots positions[t] mod Capacity.
func (b *Backend) StoreKV(cache, src, positions kernels.Tensor) error {
	const op = "StoreKV"
	ca, err := b.out(op, "cache", cache)
	if err != nil {
		return err
	}
	sa, err := b.in(op, "src", src)
	if err != nil {
		return err
	}
	pa, err := b.in(op, "positions", positions)
	if err != nil {
		return err
	}
	t, cols := positions.Numel(), cache.Cols()
	if positions.DType != dtype.I32 || !isFloat(cache) || !isFloat(src) || cache.Rows() == 0 ||
		src.Cols() != cols || src.Numel() != t*cols {
		return b.errf(op, "cache %v, src %v, positions %v (want [Capacity, C], [T, C], I32 [T])", cache, src, positions)
	}
	if overlap(ca, sa) || overlap(ca, pa) {
		return b.errf(op, "cache %v overlaps an input", cache)
	}
	if t*cols == 0 {
		return nil
	}
	th := min(eltThreads, ceilDiv(cols, 32)*32)
	return b.run(&Dispatch{
		Kernel:  "store_kv",
		Groups:  [3]int{ceilDiv(cols, th), t, 1},
		Threads: [3]int{th, 1, 1},
		Args:    []Arg{sa, pa, ca, inline(storeParams{Rows: int32(t), Cols: int32(cols), Capacity: int32(cache.Rows())})},
		Consts:  Consts{X: src.DType, Y: cache.DType},
	})
}

// Attention computes out [T, Heads·HeadDim] from q and the KV caches.
func (b *Backend) Attention(out, q, kCache, vCache, positions kernels.Tensor, p kernels.AttentionParams) error {
	const op = "Attention"
	oa, err := b.out(op, "out", out)
	if err != nil {
		return err
	}
	qa, err := b.in(op, "q", q)
	if err != nil {
		return err
	}
	ka, err := b.in(op, "kCache", kCache)
	if err != nil {
		return err
	}
	va, err := b.in(op, "vCache", vCache)
	if err != nil {
		return err
	}
	pa, err := b.in(op, "positions", positions)
	if err != nil {
		return err
	}
	if p.Heads <= 0 || p.KVHeads <= 0 || p.Heads%p.KVHeads != 0 || p.HeadDim <= 0 || p.HeadDim > maxHeadDim || p.Window < 0 {
		return b.errf(op, "params %+v (want KVHeads dividing Heads, 1 ≤ HeadDim ≤ %d, Window ≥ 0)", p, maxHeadDim)
	}
	t := positions.Numel()
	qcols, kvcols := p.Heads*p.HeadDim, p.KVHeads*p.HeadDim
	if positions.DType != dtype.I32 || !isFloat(q) || !isFloat(out) || q.Numel() != t*qcols || out.Numel() != t*qcols {
		return b.errf(op, "q %v and out %v must be float [T=%d, %d]; positions %v I32", q, out, t, qcols, positions)
	}
	if !isFloat(kCache) || kCache.DType != vCache.DType || kCache.Cols() != kvcols || vCache.Cols() != kvcols ||
		kCache.Rows() != vCache.Rows() || kCache.Rows() == 0 {
		return b.errf(op, "caches %v and %v must be one float type, [Capacity, %d]", kCache, vCache, kvcols)
	}
	capacity := kCache.Rows()
	if p.Window > 0 && capacity < p.Window {
		return b.errf(op, "a window of %d needs %d cache slots, the cache has %d", p.Window, p.Window, capacity)
	}
	if overlap(oa, qa) || overlap(oa, ka) || overlap(oa, va) || overlap(oa, pa) {
		return b.errf(op, "out %v overlaps an input", out)
	}
	if t == 0 {
		return nil
	}
	return b.run(&Dispatch{
		Kernel:  "attention",
		Groups:  [3]int{p.Heads, t, 1},
		Threads: [3]int{attnThreads, 1, 1},
		Args: []Arg{qa, ka, va, pa, oa, inline(attnParams{Heads: int32(p.Heads), KVHeads: int32(p.KVHeads),
			HeadDim: int32(p.HeadDim), Window: int32(p.Window), Scale: p.Scale, Capacity: int32(capacity)})},
		Consts: Consts{X: q.DType, W: kCache.DType, Y: out.DType},
	})
}
