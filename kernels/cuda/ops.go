package cuda

import (
	"fmt"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

const maxBlocksY = 65535

// launch enqueues kernel name of module mod.
func (b *Backend) launch(mod, name string, grid, block cuda.Dim3, smem int, a *cuda.Args) error {
	f, err := b.fn(mod, name)
	if err != nil {
		return err
	}
	if smem > 48<<10 {
		if smem > b.props.MaxSharedOptin {
			return fmt.Errorf("cuda: %s needs %d bytes of shared memory, the device allows %d", name, smem, b.props.MaxSharedOptin)
		}
		if err := b.allowSharedMem(f, smem); err != nil {
			return err
		}
	}
	if b.pdl && b.capturing { // decode graphs: prefill lost 4% of pp512 with PDL on (NOTES.md)
		return cuda.LaunchPDL(f, grid, block, smem, b.stream, a)
	}
	return cuda.Launch(f, grid, block, smem, b.stream, a)
}

// allowSharedMem raises f's dynamic shared memory limit to at least smem
// bytes (never lowers it: a launch may rely on a larger limit set before).
func (b *Backend) allowSharedMem(f *cuda.Function, smem int) error {
	k := occKey{f, -1}
	if b.occ[k] >= smem {
		return nil
	}
	if err := f.SetMaxDynamicShared(smem); err != nil {
		return err
	}
	b.occ[k] = smem
	return nil
}

// occupancy returns blocks per SM for f (cached).
func (b *Backend) occupancy(mod, name string, block, smem int) int {
	f, err := b.fn(mod, name)
	if err != nil {
		return 1
	}
	k := occKey{f, smem}
	if n, ok := b.occ[k]; ok {
		return n
	}
	if smem > 48<<10 {
		if err := b.allowSharedMem(f, smem); err != nil {
			return 1
		}
	}
	n, err := f.Occupancy(block, smem)
	if err != nil || n < 1 {
		n = 1
	}
	b.occ[k] = n
	return n
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func ceilDiv64(a, b int64) int64 { return (a + b - 1) / b }

func floatArg(t kernels.Tensor, what string) error {
	if !t.DType.IsFloat() {
		return fmt.Errorf("cuda: %s has dtype %s (want F32, F16 or BF16)", what, t.DType)
	}
	return nil
}

func i32Arg(t kernels.Tensor, what string) error {
	if t.DType != dtype.I32 {
		return fmt.Errorf("cuda: %s has dtype %s (want I32)", what, t.DType)
	}
	return nil
}

// gridFor returns a 1D grid of 256-thread blocks for n elements.
func (b *Backend) gridFor(n int) cuda.Dim3 {
	return cuda.Dim3{X: max(1, min(ceilDiv(n, 256), b.props.SMs*16)), Y: 1, Z: 1}
}

var block256 = cuda.Dim3{X: 256, Y: 1, Z: 1}

// weightPtrs returns the device addresses of a weight's data, scales and biases.
func (b *Backend) weightPtrs(w *kernels.Weight) (data, sc, bi cuda.DevicePtr, err error) {
	if data, err = b.dev(w.Data, "weight data"); err != nil {
		return
	}
	if w.Quantized() {
		if sc, err = b.dev(w.Scales, "weight scales"); err != nil {
			return
		}
		if bi, err = b.dev(w.Biases, "weight biases"); err != nil {
			return
		}
		if w.Scales.DType != w.Biases.DType {
			err = fmt.Errorf("cuda: weight scales are %s but biases %s", w.Scales.DType, w.Biases.DType)
		}
	}
	return
}

// checkExpertsInBuffer checks that the last expert of a 3D weight lies inside
// the buffers.
func (b *Backend) checkExpertsInBuffer(w *kernels.Weight) error {
	last, err := w.Expert(w.Experts - 1)
	if err != nil {
		return err
	}
	_, _, _, err = b.weightPtrs(&last)
	if err != nil {
		return fmt.Errorf("cuda: expert %d of %d: %w", w.Experts-1, w.Experts, err)
	}
	return nil
}

// mvPlan is how a matrix-vector product runs.
type mvPlan struct {
	kernel string
	smem   int
	rows   int // rows per warp
}

// planMV picks the matrix-vector kernel for weight w (2D view) with P pairs.
// ok is false when x does not fit in shared memory (use the GEMM then).
func (b *Backend) planMV(w *kernels.Weight, data cuda.DevicePtr, stride int64, P int) (mvPlan, bool) {
	K := w.K
	aligned := func(rowBytes int64) bool {
		return data%16 == 0 && rowBytes%16 == 0 && stride%16 == 0
	}
	var pl mvPlan
	switch {
	case w.Quantized() && (w.Bits == 4 || w.Bits == 8) && aligned(int64(K)*int64(w.Bits)/8) &&
		int64(w.N)*int64(K)*int64(w.Bits)/8 < 1<<32: // the kernel uses 32-bit offsets
		e := 128 / w.Bits
		pl.smem = (K/e)*(e+4)*4 + (K/e)*2*4
		pl.kernel = "qmv4_r"
		if w.Bits == 8 {
			pl.kernel = "qmv8_r"
		}
	case !w.Quantized() && aligned(int64(K)*int64(w.Data.DType.Size())) && K%(16/w.Data.DType.Size()) == 0:
		e := 16 / w.Data.DType.Size()
		pl.smem = (K / e) * (e + 4) * 4
		pl.kernel = map[dtype.DType]string{dtype.F32: "dmv_f32", dtype.BF16: "dmv_bf16", dtype.F16: "dmv_f16"}[w.Data.DType]
		pl.rows = 2
	default:
		pl.kernel = "mv_generic"
		pl.smem = K * 4
		pl.rows = 1
	}
	if pl.smem > b.props.MaxSharedOptin {
		return pl, false
	}
	if b.mvKernel != "" && b.mvKernel != mvTC && pl.rows == 0 { // benchmarks: force a variant
		pl.kernel = b.mvKernel
		pl.rows = int(b.mvKernel[6] - '0')
		return pl, true
	}
	if pl.rows == 0 { // quantized fast kernels come in 1, 2 and 4 rows per warp
		pl.rows = 4
		for pl.rows > 1 && ceilDiv(w.N, QMVWarps*pl.rows)*P < 2*b.props.SMs {
			pl.rows /= 2
		}
		pl.kernel += [...]string{1: "1", 2: "2", 4: "4"}[pl.rows]
	}
	return pl, true
}

// QMVWarps is the number of warps per block of the matrix-vector kernels.
const QMVWarps = 8

// mvTC names the tensor-core matrix-vector kernel (qmvt) where tests and
// benchmarks force a variant: every product it can take runs on it (fused
// ones included, whatever their size), others take the backend's choice.
const mvTC = "qmvt"

// matvec enqueues y[p] = x[p/xdiv]·W[e(p)]ᵀ for P pairs.
func (b *Backend) matvec(pl mvPlan, y, x kernels.Tensor, yp, xp cuda.DevicePtr, w *kernels.Weight,
	data, sc, bi, ids cuda.DevicePtr, nexp, xdiv, P int, wstride, gstride int64) error {
	if P > maxBlocksY {
		return fmt.Errorf("cuda: %d matrix-vector products in one launch (at most %d)", P, maxBlocksY)
	}
	if w.Quantized() && pl.kernel != "mv_generic" && (b.mvKernel == "" || b.mvKernel == mvTC) {
		segs := []mvSeg{{w: w, data: data, sc: sc, bi: bi, y: y, yp: yp}}
		n := mvNormArgs{off: true, scale: 1}
		if b.tcMVOK(segs, false, x, n) {
			return b.qmvt(segs, false, x, xp, xdiv, n, 0, ids, nexp, P, wstride, gstride)
		}
	}
	blocksX := ceilDiv(w.N, QMVWarps*pl.rows)
	capBlocks := b.props.SMs * b.occupancy("matmul", pl.kernel, 256, pl.smem)
	gx := max(1, min(blocksX, ceilDiv(capBlocks, P)))
	a := b.args.Reset()
	a.Ptr(yp).I32(int(y.DType)).Ptr(xp).I32(int(x.DType))
	switch {
	case pl.kernel == "mv_generic":
		a.Ptr(data).I32(int(w.Data.DType)).Ptr(sc).Ptr(bi).I32(int(w.Scales.DType)).I32(w.Bits).
			I32(w.N).I32(w.K).I32(w.Group).Ptr(ids).I32(nexp).I32(xdiv).I64(wstride).I64(gstride)
	case w.Quantized():
		a.Ptr(data).Ptr(sc).Ptr(bi).I32(int(w.Scales.DType)).I32(w.N).I32(w.K).I32(w.Group).
			Ptr(ids).I32(nexp).I32(xdiv).I64(wstride).I64(gstride)
	default:
		a.Ptr(data).I32(w.N).I32(w.K).Ptr(ids).I32(nexp).I32(xdiv).I64(wstride)
	}
	return b.launch("matmul", pl.kernel, cuda.Dim3{X: gx, Y: P, Z: 1}, block256, pl.smem, a)
}

// gemmUp is the second weight of a GLU GEMM (y = gelu(x·Wᵀ)·(x·upᵀ)).
type gemmUp struct {
	data, sc, bi cuda.DevicePtr
}

// gemm enqueues the tiled GEMM (plain when perm is 0, else gathered by
// tiles; with up, the GLU GEMM of w and up).
func (b *Backend) gemm(y, x kernels.Tensor, yp, xp cuda.DevicePtr, w *kernels.Weight, data, sc, bi cuda.DevicePtr,
	M int, perm, tiles cuda.DevicePtr, tilesX, xdiv int, wstride, gstride int64, up *gemmUp) error {
	name := "gemm_f32"
	if x.DType == dtype.BF16 && b.props.Major >= 8 {
		name = "gemm_tc"
	}
	gx := ceilDiv(M, 64)
	if perm != 0 {
		gx = tilesX
	}
	gy := ceilDiv(w.N, 64)
	if gy > maxBlocksY {
		return fmt.Errorf("cuda: GEMM with %d output features (at most %d)", w.N, 64*maxBlocksY)
	}
	sdt := 0
	if w.Quantized() {
		sdt = int(w.Scales.DType)
	}
	fast := 0
	if x.DType == dtype.BF16 && xp%16 == 0 && w.K%8 == 0 {
		fast |= 1 // 16-byte loads of bf16 x rows
	}
	if (w.Bits == 4 || w.Bits == 8) && data%16 == 0 && wstride%16 == 0 {
		fast |= 2 // vector loads and exact fast dequantization of W
	}
	a := b.args.Reset()
	if up != nil && (name != "gemm_tc" || fast != 3 || w.K%32 != 0) {
		return fmt.Errorf("cuda: GLU GEMM of x %s and a %d-bit weight of K %d", x.DType, w.Bits, w.K)
	}
	if name == "gemm_tc" && fast == 3 && w.K%32 == 0 && (!b.gemmPlain || up != nil) {
		// The pipelined kernels (gemm_q4, gemm_q4b, gemm_q8): bf16 x rows and
		// 4- or 8-bit weights, aligned, whole 32-wide slices of K. A plain
		// GEMM of few tiles splits K over blocks (f32 partial products in
		// scratch, added up in order by gemm_splitk_sum).
		ks := 1
		if perm == 0 && !b.noSplitK && up == nil {
			ks = min(splitKMax, b.props.SMs/(gx*gy), w.K/32/8) // at least 8 slices a block
		}
		ks = max(ks, 1)
		var part cuda.DevicePtr
		if ks > 1 {
			var err error
			if part, err = b.scratch(int64(ks) * int64(M) * int64(w.N) * 4); err != nil {
				return err
			}
			defer b.release(part)
		}
		var u gemmUp
		if up != nil {
			u = *up
		}
		a.Ptr(yp).I32(int(y.DType)).Ptr(xp).Ptr(data).Ptr(sc).Ptr(bi).I32(sdt).
			I32(M).I32(w.N).I32(w.K).I32(w.Group).Ptr(perm).Ptr(tiles).I32(xdiv).I64(wstride).I64(gstride).
			I32(ks).Ptr(part).Ptr(u.data).Ptr(u.sc).Ptr(u.bi)
		name = fmt.Sprintf("gemm_q%d", w.Bits)
		if w.Bits == 4 && w.Scales.DType == dtype.BF16 {
			name = "gemm_q4b" // MLX's default: bf16 pair dequantization
		}
		if up != nil {
			name += "_glu"
		}
		if err := b.launch("matmul", name, cuda.Dim3{X: gx, Y: gy, Z: ks}, cuda.Dim3{X: 128, Y: 1, Z: 1}, 0, a); err != nil || ks == 1 {
			return err
		}
		n := int64(M) * int64(w.N)
		a = b.args.Reset()
		a.Ptr(yp).I32(int(y.DType)).Ptr(part).I32(ks).I64(n)
		return b.launch("matmul", "gemm_splitk_sum", cuda.Dim3{X: int(min(ceilDiv64(n, 256), int64(4*b.props.SMs))), Y: 1, Z: 1},
			cuda.Dim3{X: 256, Y: 1, Z: 1}, 0, a)
	}
	a.Ptr(yp).I32(int(y.DType)).Ptr(xp).I32(int(x.DType)).Ptr(data).I32(int(w.Data.DType)).Ptr(sc).Ptr(bi).I32(sdt).
		I32(w.Bits).I32(M).I32(w.N).I32(w.K).I32(max(w.Group, 1)).Ptr(perm).Ptr(tiles).I32(xdiv).I64(wstride).I64(gstride).
		I32(fast)
	return b.launch("matmul", name, cuda.Dim3{X: gx, Y: gy, Z: 1}, cuda.Dim3{X: 128, Y: 1, Z: 1}, 0, a)
}

// MatMul computes y[M,N] = x[M,K]·Wᵀ.
func (b *Backend) MatMul(y, x kernels.Tensor, w *kernels.Weight) error {
	if err := w.Validate(); err != nil {
		return err
	}
	if w.Experts != 0 {
		return fmt.Errorf("cuda: MatMul with a 3D weight of %d experts (use MatMulExperts or Weight.Expert)", w.Experts)
	}
	if err := floatArg(x, "MatMul x"); err != nil {
		return err
	}
	if err := floatArg(y, "MatMul y"); err != nil {
		return err
	}
	M := x.Rows()
	if x.Cols() != w.K || y.Rows() != M || y.Cols() != w.N {
		return fmt.Errorf("cuda: MatMul y%v = x%v·Wᵀ with W [%d, %d]", y.Shape, x.Shape, w.N, w.K)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	yp, err := b.dev(y, "MatMul y")
	if err != nil {
		return err
	}
	xp, err := b.dev(x, "MatMul x")
	if err != nil {
		return err
	}
	data, sc, bi, err := b.weightPtrs(w)
	if err != nil {
		return err
	}
	if M == 0 {
		return nil
	}
	if b.mvRows(M, x, w) {
		if pl, ok := b.planMV(w, data, 0, M); ok {
			return b.matvec(pl, y, x, yp, xp, w, data, sc, bi, 0, 0, 1, M, 0, 0)
		}
	}
	return b.gemm(y, x, yp, xp, w, data, sc, bi, M, 0, 0, 0, 1, 0, 0, nil)
}

// mvRows reports whether MatMul runs its M rows as one matrix-vector launch
// (a row a block row, W re-read through the L2 for each) instead of a GEMM:
// for one row, for a few bf16 rows, and for f32 rows against an 8-bit W
// (the router's logits), as long as the L2 traffic stays modest. A GEMM
// block walks all of K for its 64×64 tile, so a GEMM of a few rows, or of a
// W with few rows, runs on few blocks (BenchmarkPrefillGEMM measures both).
// f32 rows take the matrix-vector kernels only at 8 bits, where they
// dequantize exactly: the 4-bit kernels' one-accumulator encoding costs
// about 8 bits of the f32 sum, below bf16 rounding but not below f32's (the
// f32 fixtures then miss their bound).
func (b *Backend) mvRows(M int, x kernels.Tensor, w *kernels.Weight) bool {
	if M == 1 {
		return true
	}
	if b.mvRowsMode < 0 || M > maxBlocksY {
		return false
	}
	if b.mvRowsMode > 0 {
		return true
	}
	bits := 8 * w.Data.DType.Size()
	if w.Quantized() {
		bits = w.Bits
	}
	if int64(M)*int64(w.N)*int64(w.K)*int64(bits)/8 > mvRowsL2Bytes {
		return false
	}
	if x.DType == dtype.F32 {
		return w.Quantized() && w.Bits == 8
	}
	return M <= mvRowsMax
}

// mvPairs reports whether MatMulExperts runs its P (token, slot) pairs of M
// tokens as one matrix-vector launch (each pair reading its expert's rows)
// instead of sorting them into expert tiles for the GEMM: for one or two
// tokens, and while the pairs are so few that most experts would get a
// tile of a row or two, whose GEMM block dequantizes the expert's whole
// slice for them (BenchmarkPrefillGEMM).
func (b *Backend) mvPairs(M, P, E int) bool {
	switch {
	case M <= 2:
		return true
	case b.mvRowsMode != 0 || P > maxBlocksY:
		return b.mvRowsMode > 0 && P <= maxBlocksY
	}
	return P <= mvPairsPerExpert*E
}

// mvPairsPerExpert is the most (token, slot) pairs per expert, on average,
// that MatMulExperts runs as matrix-vector products.
const mvPairsPerExpert = 4

// splitKMax is the most blocks a plain GEMM tile's K is split over.
const splitKMax = 4

// mvRowsMax is the most rows MatMul runs as matrix-vector products in bf16;
// mvRowsL2Bytes bounds the weight bytes those products read in all.
const (
	mvRowsMax     = 16
	mvRowsL2Bytes = 256 << 20
)

// MatMulExperts computes y[M,k,N] = x[m]·W[ids[m,j]]ᵀ. For one or two tokens,
// or few pairs per expert (mvPairs), it runs one matrix-vector launch over
// all (token, slot) pairs, each block reading its expert id on the device;
// for more it sorts the pairs by expert on the device and runs a tiled GEMM
// so each expert's weights are read once per 64 pairs.
func (b *Backend) MatMulExperts(y, x kernels.Tensor, w *kernels.Weight, ids kernels.Tensor) error {
	if err := w.Validate(); err != nil {
		return err
	}
	if w.Experts <= 0 {
		return fmt.Errorf("cuda: MatMulExperts needs a 3D weight")
	}
	if err := i32Arg(ids, "MatMulExperts ids"); err != nil {
		return err
	}
	if err := floatArg(x, "MatMulExperts x"); err != nil {
		return err
	}
	if err := floatArg(y, "MatMulExperts y"); err != nil {
		return err
	}
	M, k := ids.Rows(), ids.Cols()
	if len(ids.Shape) == 1 {
		M, k = ids.Shape[0], 1
	}
	P := M * k
	xdiv := 0
	switch {
	case x.Cols() == w.K && x.Rows() == M:
		xdiv = k
	case x.Cols() == w.K && x.Rows() == P:
		xdiv = 1
	default:
		return fmt.Errorf("cuda: MatMulExperts x%v for ids%v and K %d (want [%d, %d] or [%d, %d])", x.Shape, ids.Shape, w.K, M, w.K, P, w.K)
	}
	if y.Numel() != P*w.N || y.Cols() != w.N {
		return fmt.Errorf("cuda: MatMulExperts y%v (want [%d, %d, %d])", y.Shape, M, k, w.N)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	yp, err := b.dev(y, "MatMulExperts y")
	if err != nil {
		return err
	}
	xp, err := b.dev(x, "MatMulExperts x")
	if err != nil {
		return err
	}
	idp, err := b.dev(ids, "MatMulExperts ids")
	if err != nil {
		return err
	}
	data, sc, bi, err := b.weightPtrs(w)
	if err != nil {
		return err
	}
	if err := b.checkExpertsInBuffer(w); err != nil {
		return err
	}
	if P == 0 {
		return nil
	}
	if b.mvPairs(M, P, w.Experts) {
		if pl, ok := b.planMV(w, data, w.DataStride, P); ok {
			return b.matvec(pl, y, x, yp, xp, w, data, sc, bi, idp, w.Experts, xdiv, P, w.DataStride, w.GroupStride)
		}
	}
	// Sort pairs by expert on the device, then one GEMM over the tiles.
	perm, tiles, maxTiles, release, err := b.sortPairs(idp, P, w.Experts)
	if err != nil {
		return err
	}
	defer release()
	return b.gemm(y, x, yp, xp, w, data, sc, bi, P, perm, tiles, maxTiles, xdiv, w.DataStride, w.GroupStride, nil)
}

// sortPairs enqueues moe_sort of the P (token, slot) pairs' expert ids
// into scratch: perm (the pairs expert by expert) and the tiles of at most
// 64 pairs of one expert (maxTiles of them, the unused ones empty).
// release returns the scratch once the caller has enqueued its users.
func (b *Backend) sortPairs(idp cuda.DevicePtr, P, E int) (perm, tiles cuda.DevicePtr, maxTiles int, release func(), err error) {
	maxTiles = ceilDiv(P, 64) + min(E, P)
	scr, err := b.scratch(int64(4 * (P + 3*maxTiles)))
	if err != nil {
		return 0, 0, 0, nil, err
	}
	perm, tiles = scr, scr+cuda.DevicePtr(4*P)
	a := b.args.Reset()
	a.Ptr(idp).I32(P).I32(E).Ptr(perm).Ptr(tiles).I32(maxTiles)
	if err := b.launch("matmul", "moe_sort", cuda.Dim3{X: 1, Y: 1, Z: 1}, cuda.Dim3{X: 1024, Y: 1, Z: 1}, 3*E*4, a); err != nil {
		b.release(scr)
		return 0, 0, 0, nil, err
	}
	return perm, tiles, maxTiles, func() { b.release(scr) }, nil
}

// MoECombine computes y[M,N] = Σ_j weights[m,j]·x[m,j,:].
func (b *Backend) MoECombine(y, x, weights kernels.Tensor) error {
	if weights.DType != dtype.F32 {
		return fmt.Errorf("cuda: MoECombine weights have dtype %s (want F32)", weights.DType)
	}
	if err := floatArg(x, "MoECombine x"); err != nil {
		return err
	}
	if err := floatArg(y, "MoECombine y"); err != nil {
		return err
	}
	M, k := weights.Rows(), weights.Cols()
	N := y.Cols()
	if y.Rows() != M || x.Numel() != M*k*N || x.Cols() != N {
		return fmt.Errorf("cuda: MoECombine y%v from x%v and weights%v", y.Shape, x.Shape, weights.Shape)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{y, x, weights}, "MoECombine y", "MoECombine x", "MoECombine weights")
	if err != nil || M == 0 || N == 0 {
		return err
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(y.DType)).Ptr(ptrs[1]).I32(int(x.DType)).Ptr(ptrs[2]).I32(k).I32(N)
	return b.launch("elementwise", "moe_combine", cuda.Dim3{X: ceilDiv(N, 256), Y: M, Z: 1}, block256, 0, a)
}

func (b *Backend) devs(ts []kernels.Tensor, names ...string) ([]cuda.DevicePtr, error) {
	out := make([]cuda.DevicePtr, len(ts))
	for i, t := range ts {
		p, err := b.dev(t, names[i])
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// Embed gathers rows of the table for the ids into y, times scale.
func (b *Backend) Embed(y kernels.Tensor, table *kernels.Weight, ids kernels.Tensor, scale float32) error {
	if err := table.Validate(); err != nil {
		return err
	}
	if table.Experts != 0 {
		return fmt.Errorf("cuda: Embed with a 3D table")
	}
	if err := i32Arg(ids, "Embed ids"); err != nil {
		return err
	}
	if err := floatArg(y, "Embed y"); err != nil {
		return err
	}
	M := ids.Numel()
	if y.Rows() != M || y.Cols() != table.K {
		return fmt.Errorf("cuda: Embed y%v for %d ids of width %d", y.Shape, M, table.K)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	yp, err := b.dev(y, "Embed y")
	if err != nil {
		return err
	}
	idp, err := b.dev(ids, "Embed ids")
	if err != nil {
		return err
	}
	data, sc, bi, err := b.weightPtrs(table)
	if err != nil || M == 0 {
		return err
	}
	if M > maxBlocksY {
		return fmt.Errorf("cuda: Embed of %d ids (at most %d)", M, maxBlocksY)
	}
	sdt := 0
	if table.Quantized() {
		sdt = int(table.Scales.DType)
	}
	a := b.args.Reset()
	a.Ptr(yp).I32(int(y.DType)).Ptr(data).I32(int(table.Data.DType)).Ptr(sc).Ptr(bi).I32(sdt).I32(table.Bits).
		I32(max(table.Group, 1)).Ptr(idp).I32(table.N).I32(table.K).F32(scale)
	return b.launch("elementwise", "embed", cuda.Dim3{X: ceilDiv(table.K, 256), Y: M, Z: 1}, block256, 0, a)
}

// RMSNorm normalizes each row of x: y = x·(mean(x²)+eps)^-½ · w.
func (b *Backend) RMSNorm(y, x, w kernels.Tensor, eps float32) error {
	if err := floatArg(x, "RMSNorm x"); err != nil {
		return err
	}
	if err := floatArg(y, "RMSNorm y"); err != nil {
		return err
	}
	cols := x.Cols()
	if y.Numel() != x.Numel() || y.Cols() != cols {
		return fmt.Errorf("cuda: RMSNorm y%v from x%v", y.Shape, x.Shape)
	}
	if !w.IsZero() {
		if err := floatArg(w, "RMSNorm weight"); err != nil {
			return err
		}
		if w.Numel() != cols {
			return fmt.Errorf("cuda: RMSNorm weight %v for rows of %d", w.Shape, cols)
		}
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{y, x}, "RMSNorm y", "RMSNorm x")
	if err != nil {
		return err
	}
	var wp cuda.DevicePtr
	wdt := 0
	if !w.IsZero() {
		if wp, err = b.dev(w, "RMSNorm weight"); err != nil {
			return err
		}
		wdt = int(w.DType)
	}
	rows := x.Rows()
	if rows == 0 || cols == 0 {
		return nil
	}
	threads := min(1024, max(32, ceilDiv(cols, 4*32)*32))
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(y.DType)).Ptr(ptrs[1]).I32(int(x.DType)).Ptr(wp).I32(wdt).I32(cols).F32(eps)
	return b.launch("elementwise", "rmsnorm", cuda.Dim3{X: rows, Y: 1, Z: 1}, cuda.Dim3{X: threads, Y: 1, Z: 1}, 0, a)
}

// RoPE rotates x [T, heads, D] in place by positions·invFreq.
func (b *Backend) RoPE(x, positions, invFreq kernels.Tensor) error {
	if err := floatArg(x, "RoPE x"); err != nil {
		return err
	}
	if err := i32Arg(positions, "RoPE positions"); err != nil {
		return err
	}
	if err := floatArg(invFreq, "RoPE inverse frequencies"); err != nil {
		return err
	}
	T, half := positions.Numel(), invFreq.Numel()
	D := 2 * half
	if T == 0 || D == 0 || x.Numel()%(T*D) != 0 || (len(x.Shape) == 3 && x.Shape[2] != D) {
		return fmt.Errorf("cuda: RoPE of x%v with %d positions and %d frequencies", x.Shape, T, half)
	}
	heads := x.Numel() / (T * D)
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{x, positions, invFreq}, "RoPE x", "RoPE positions", "RoPE frequencies")
	if err != nil || heads == 0 {
		return err
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(x.DType)).Ptr(ptrs[1]).Ptr(ptrs[2]).I32(int(invFreq.DType)).I32(heads).I32(D)
	return b.launch("elementwise", "rope", cuda.Dim3{X: T * heads, Y: 1, Z: 1}, cuda.Dim3{X: min(256, max(32, ceilDiv(half, 32)*32)), Y: 1, Z: 1}, 0, a)
}

// binary launches a kernel of signature (y, ydt, a, adt, b, bdt, n).
func (b *Backend) binary(op, name string, y, x1, x2 kernels.Tensor) error {
	for i, t := range []kernels.Tensor{y, x1, x2} {
		if err := floatArg(t, fmt.Sprintf("%s operand %d", op, i)); err != nil {
			return err
		}
	}
	n := y.Numel()
	if x1.Numel() != n || x2.Numel() != n {
		return fmt.Errorf("cuda: %s of %v and %v into %v (element counts differ)", op, x1.Shape, x2.Shape, y.Shape)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{y, x1, x2}, op+" y", op+" a", op+" b")
	if err != nil || n == 0 {
		return err
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(y.DType)).Ptr(ptrs[1]).I32(int(x1.DType)).Ptr(ptrs[2]).I32(int(x2.DType)).I64(int64(n))
	return b.launch("elementwise", name, b.gridFor(n), block256, 0, a)
}

// unary launches a kernel of signature (y, ydt, x, xdt, s, n).
func (b *Backend) unary(op, name string, y, x kernels.Tensor, s float32) error {
	if err := floatArg(x, op+" x"); err != nil {
		return err
	}
	if err := floatArg(y, op+" y"); err != nil {
		return err
	}
	n := y.Numel()
	if x.Numel() != n {
		return fmt.Errorf("cuda: %s of %v into %v (element counts differ)", op, x.Shape, y.Shape)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{y, x}, op+" y", op+" x")
	if err != nil || n == 0 {
		return err
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(y.DType)).Ptr(ptrs[1]).I32(int(x.DType)).F32(s).I64(int64(n))
	return b.launch("elementwise", name, b.gridFor(n), block256, 0, a)
}

// GeluTanhMul computes y = gelu_tanh(gate)·up.
func (b *Backend) GeluTanhMul(y, gate, up kernels.Tensor) error {
	return b.binary("GeluTanhMul", "gelu_mul", y, gate, up)
}

// Add computes y = a + b.
func (b *Backend) Add(y, x1, x2 kernels.Tensor) error { return b.binary("Add", "add", y, x1, x2) }

// Scale computes y = s·x.
func (b *Backend) Scale(y, x kernels.Tensor, s float32) error {
	return b.unary("Scale", "scale", y, x, s)
}

// Softcap computes y = c·tanh(x/c).
func (b *Backend) Softcap(y, x kernels.Tensor, c float32) error {
	if c == 0 {
		return fmt.Errorf("cuda: Softcap with cap 0")
	}
	return b.unary("Softcap", "softcap", y, x, c)
}

// Softmax normalizes each row of x (f32 inside).
func (b *Backend) Softmax(y, x kernels.Tensor) error {
	if err := floatArg(x, "Softmax x"); err != nil {
		return err
	}
	if err := floatArg(y, "Softmax y"); err != nil {
		return err
	}
	cols := x.Cols()
	if y.Numel() != x.Numel() || y.Cols() != cols {
		return fmt.Errorf("cuda: Softmax y%v from x%v", y.Shape, x.Shape)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{y, x}, "Softmax y", "Softmax x")
	if err != nil || x.Rows() == 0 || cols == 0 {
		return err
	}
	threads := min(1024, max(32, ceilDiv(cols, 4*32)*32))
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(y.DType)).Ptr(ptrs[1]).I32(int(x.DType)).I32(cols)
	return b.launch("elementwise", "softmax", cuda.Dim3{X: x.Rows(), Y: 1, Z: 1}, cuda.Dim3{X: threads, Y: 1, Z: 1}, 0, a)
}

// RouterTopK writes the top k experts of softmax(logits) per row.
func (b *Backend) RouterTopK(weights, ids, logits, perExpertScale kernels.Tensor, k int) error {
	if err := floatArg(logits, "RouterTopK logits"); err != nil {
		return err
	}
	if err := i32Arg(ids, "RouterTopK ids"); err != nil {
		return err
	}
	if weights.DType != dtype.F32 {
		return fmt.Errorf("cuda: RouterTopK weights have dtype %s (want F32)", weights.DType)
	}
	M, E := logits.Rows(), logits.Cols()
	if E > 1024 {
		return fmt.Errorf("cuda: RouterTopK over %d experts (at most 1024)", E)
	}
	if k < 1 || k > E || k > 32 {
		return fmt.Errorf("cuda: RouterTopK k = %d for %d experts (want 1..min(E, 32))", k, E)
	}
	if ids.Numel() != M*k || weights.Numel() != M*k {
		return fmt.Errorf("cuda: RouterTopK ids%v and weights%v for %d rows and k %d", ids.Shape, weights.Shape, M, k)
	}
	if !perExpertScale.IsZero() {
		if err := floatArg(perExpertScale, "RouterTopK per-expert scale"); err != nil {
			return err
		}
		if perExpertScale.Numel() != E {
			return fmt.Errorf("cuda: RouterTopK per-expert scale %v for %d experts", perExpertScale.Shape, E)
		}
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{weights, ids, logits}, "RouterTopK weights", "RouterTopK ids", "RouterTopK logits")
	if err != nil {
		return err
	}
	var pp cuda.DevicePtr
	pdt := 0
	if !perExpertScale.IsZero() {
		if pp, err = b.dev(perExpertScale, "RouterTopK per-expert scale"); err != nil {
			return err
		}
		pdt = int(perExpertScale.DType)
	}
	if M == 0 {
		return nil
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).Ptr(ptrs[1]).Ptr(ptrs[2]).I32(int(logits.DType)).Ptr(pp).I32(pdt).I32(M).I32(E).I32(k)
	name := "router_topk32" // the logits a lane holds: 4, 8 or 32
	switch {
	case E <= 128:
		name = "router_topk4"
	case E <= 256:
		name = "router_topk8"
	}
	return b.launch("elementwise", name, cuda.Dim3{X: ceilDiv(M, 4), Y: 1, Z: 1}, cuda.Dim3{X: 128, Y: 1, Z: 1}, 0, a)
}

// StoreKV writes src [T, C] into cache slots positions[t] mod Capacity.
func (b *Backend) StoreKV(cache, src, positions kernels.Tensor) error {
	if err := floatArg(cache, "StoreKV cache"); err != nil {
		return err
	}
	if err := floatArg(src, "StoreKV src"); err != nil {
		return err
	}
	if err := i32Arg(positions, "StoreKV positions"); err != nil {
		return err
	}
	T, cols := positions.Numel(), cache.Cols()
	if src.Numel() != T*cols || src.Cols() != cols {
		return fmt.Errorf("cuda: StoreKV of src%v into cache%v at %d positions", src.Shape, cache.Shape, T)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{cache, src, positions}, "StoreKV cache", "StoreKV src", "StoreKV positions")
	if err != nil || T == 0 || cols == 0 {
		return err
	}
	if T > maxBlocksY {
		return fmt.Errorf("cuda: StoreKV of %d rows (at most %d)", T, maxBlocksY)
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(cache.DType)).Ptr(ptrs[1]).I32(int(src.DType)).Ptr(ptrs[2]).I32(cols).I32(cache.Rows())
	return b.launch("elementwise", "store_kv", cuda.Dim3{X: ceilDiv(cols, 256), Y: T, Z: 1}, block256, 0, a)
}

// Attention computes out from q and the caches, softmax in f32, split over
// the keys so one query row still fills the GPU.
func (b *Backend) Attention(out, q, kCache, vCache, positions kernels.Tensor, p kernels.AttentionParams) error {
	for _, c := range []struct {
		t kernels.Tensor
		n string
	}{{out, "out"}, {q, "q"}, {kCache, "k cache"}, {vCache, "v cache"}} {
		if err := floatArg(c.t, "Attention "+c.n); err != nil {
			return err
		}
	}
	if err := i32Arg(positions, "Attention positions"); err != nil {
		return err
	}
	H, KVH, D := p.Heads, p.KVHeads, p.HeadDim
	if H <= 0 || KVH <= 0 || D <= 0 || H%KVH != 0 {
		return fmt.Errorf("cuda: Attention with %d heads, %d kv heads, head dim %d", H, KVH, D)
	}
	G := H / KVH
	if G > 16 || D > 512 {
		return fmt.Errorf("cuda: Attention supports up to 16 query heads per kv head and head dim 512 (got %d, %d)", G, D)
	}
	T := positions.Numel()
	if q.Numel() != T*H*D || out.Numel() != T*H*D {
		return fmt.Errorf("cuda: Attention q%v out%v for %d rows of %d×%d", q.Shape, out.Shape, T, H, D)
	}
	if kCache.Cols() != KVH*D || vCache.Cols() != KVH*D || kCache.Rows() != vCache.Rows() || kCache.DType != vCache.DType {
		return fmt.Errorf("cuda: Attention caches k%v %s and v%v %s (want [capacity, %d] of one type)", kCache.Shape, kCache.DType, vCache.Shape, vCache.DType, KVH*D)
	}
	cp := kCache.Rows()
	es := kCache.DType.Size()
	if D%(16/es) != 0 {
		return fmt.Errorf("cuda: Attention head dim %d is not a multiple of %d", D, 16/es)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	ptrs, err := b.devs([]kernels.Tensor{out, q, kCache, vCache, positions}, "Attention out", "Attention q", "Attention k cache", "Attention v cache", "Attention positions")
	if err != nil || T == 0 {
		return err
	}
	if ptrs[2]%16 != 0 || ptrs[3]%16 != 0 {
		return fmt.Errorf("cuda: Attention caches must be 16-byte aligned")
	}
	if T > maxBlocksY {
		return fmt.Errorf("cuda: Attention of %d rows (at most %d)", T, maxBlocksY)
	}
	if b.attnTC(T, D, q, out, kCache, ptrs[0], ptrs[1]) {
		a := b.args.Reset()
		a.Ptr(ptrs[0]).Ptr(ptrs[1]).Ptr(ptrs[2]).Ptr(ptrs[3]).Ptr(ptrs[4]).I32(T).I32(H).I32(KVH).I32(cp).I32(p.Window).F32(p.Scale)
		do := min(D, 256)
		smem := ((64+32)*(D+8) + 32*(do+8)) * 2 // q tile, key tile, value tile (bf16)
		return b.launch("attention_tc", fmt.Sprintf("attn_tc_d%d", D), cuda.Dim3{X: ceilDiv(T, 64), Y: H, Z: D / do},
			cuda.Dim3{X: 128, Y: 1, Z: 1}, smem, a)
	}
	maxKeys := cp
	if p.Window > 0 {
		maxKeys = min(maxKeys, p.Window)
	}
	nch := ceilDiv(maxKeys, 64)
	Z := max(1, min(nch, ceilDiv(2*b.props.SMs, KVH*T), maxBlocksY))
	// Too few keys to fill the SMs with splits: split the heads that share a
	// kv head over blocks too (a global layer in decode: 2 kv heads × 10
	// splits of 640 keys were 20 blocks, each doing the work of 8 heads).
	HS := attnHeadSplit(G, KVH*T*Z, b.props.SMs)
	if b.attnWhole {
		HS = 1
	}
	G /= HS
	gmax := 1
	for gmax < G {
		gmax *= 2
	}
	mod := "attention_" + map[dtype.DType]string{dtype.F32: "f32", dtype.BF16: "bf16", dtype.F16: "f16"}[kCache.DType]
	smem := (G*D + 2*G*64 + 3*gmax + 128*8) * 4 // q, both halves' scores, m, l, alpha, the key groups' sums
	var part cuda.DevicePtr
	if Z > 1 {
		if part, err = b.scratch(int64(T*H*Z*(D+2)) * 4); err != nil {
			return err
		}
		defer b.release(part)
	}
	a := b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(out.DType)).Ptr(ptrs[1]).I32(int(q.DType)).Ptr(ptrs[2]).Ptr(ptrs[3]).Ptr(ptrs[4]).
		I32(H).I32(KVH).I32(D).I32(cp).I32(p.Window).F32(p.Scale).I32(Z).Ptr(part)
	if err := b.launch(mod, fmt.Sprintf("attn_g%d", gmax), cuda.Dim3{X: KVH * HS, Y: T, Z: Z}, cuda.Dim3{X: 128, Y: 1, Z: 1}, smem, a); err != nil {
		return err
	}
	if Z == 1 {
		return nil
	}
	a = b.args.Reset()
	a.Ptr(ptrs[0]).I32(int(out.DType)).Ptr(part).I32(H).I32(D).I32(Z)
	return b.launch(mod, "attn_combine", cuda.Dim3{X: H, Y: T, Z: ceilDiv(D, 32)}, cuda.Dim3{X: 128, Y: 1, Z: 1}, 4*Z, a)
}

// attnHeadSplit returns how many blocks share the g query heads of a kv
// head in the decode attention, given the blocks of the split over keys:
// doubled while it divides g and the grid stays within one block an SM.
func attnHeadSplit(g, blocks, sms int) int {
	hs := 1
	for g%(2*hs) == 0 && 2*blocks*hs <= sms {
		hs *= 2
	}
	return hs
}

// attnTC reports whether Attention runs the tensor-core prefill kernel
// (attention_tc.cu): bf16 queries, caches and output, head dim 128, 256 or
// 512, at least attnTCMinRows query rows, sm_80 or later.
func (b *Backend) attnTC(T, D int, q, out, kCache kernels.Tensor, outp, qp cuda.DevicePtr) bool {
	return !b.attnPlain && b.props.Major >= 8 && T >= attnTCMinRows && (D == 128 || D == 256 || D == 512) &&
		q.DType == dtype.BF16 && out.DType == dtype.BF16 && kCache.DType == dtype.BF16 && qp%16 == 0 && outp%4 == 0
}

// attnTCMinRows is the fewest query rows that take the tensor-core
// attention (a block takes 64 rows; decode keeps the split-key kernel).
const attnTCMinRows = 16
