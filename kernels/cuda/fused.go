package cuda

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// The fused ops of kernels.Fuser. Decode shapes (one token; the experts of
// one or two) run fused kernels; other shapes, and weights the fused
// matrix-vector kernels do not cover (bits other than 4 and 8, unaligned
// rows), run the plain sequence (kernels.Unfused).

var _ kernels.Fuser = (*Backend)(nil)

// locked runs f with the context bound and the backend locked.
func (b *Backend) locked(f func() error) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	return f()
}

func (b *Backend) unfused() kernels.Unfused { return kernels.Unfused{Backend: b} }

// Word offsets of struct MVParams (matmul.cu): four segments of 7 words,
// then the shared fields.
const (
	mvSegWords = 7
	mvNseg     = 4*mvSegWords + iota - 1
	mvK
	mvGroup
	mvSdt
	mvX
	mvXdt
	mvXdiv
	mvNw
	mvNwdt
	mvNorm
	mvXrdt
	mvEps
	mvNscale
	mvSoftcap
	mvIds
	mvNexp
	mvWstride
	mvGstride
	mvKS
	mvWords
)

// mvSeg is one weight of a fused matrix-vector launch and its output.
type mvSeg struct {
	w            *kernels.Weight
	data, sc, bi cuda.DevicePtr
	y            kernels.Tensor
	yp           cuda.DevicePtr
}

// fusedMVOK reports whether the fused matrix-vector kernels take w: 4 or 8
// bits, 16-byte aligned rows, each expert (or the matrix) under 4 GiB.
func fusedMVOK(w *kernels.Weight, data cuda.DevicePtr) bool {
	if !w.Quantized() || (w.Bits != 4 && w.Bits != 8) || w.Scales.DType != w.Biases.DType {
		return false
	}
	rowBytes := int64(w.K) * int64(w.Bits) / 8
	return data%16 == 0 && rowBytes%16 == 0 && w.DataStride%16 == 0 && int64(w.N)*rowBytes < 1<<32
}

func sameFormat(a, c *kernels.Weight) bool {
	return a.Bits == c.Bits && a.Group == c.Group && a.K == c.K && a.Scales.DType == c.Scales.DType
}

// mvNormArgs is the norm a fused matrix-vector launch applies to x.
type mvNormArgs struct {
	off   bool // no norm: the plain product of x
	w     cuda.DevicePtr
	wdt   dtype.DType
	eps   float32
	scale float32
	xrdt  dtype.DType
}

func (b *Backend) normArgs(p kernels.NormParams, K int) (mvNormArgs, error) {
	if p.Off {
		return mvNormArgs{off: true, scale: 1}, nil
	}
	n := mvNormArgs{eps: p.Eps, scale: 1, xrdt: p.XDType}
	if p.Scale != 0 {
		n.scale = p.Scale
	}
	if !p.XDType.IsFloat() {
		return n, fmt.Errorf("cuda: norm output type %s (want F32, F16 or BF16)", p.XDType)
	}
	if !p.Weight.IsZero() {
		if err := floatArg(p.Weight, "norm weight"); err != nil {
			return n, err
		}
		if p.Weight.Numel() != K {
			return n, fmt.Errorf("cuda: norm weight %v for rows of %d", p.Weight.Shape, K)
		}
		ptr, err := b.dev(p.Weight, "norm weight")
		if err != nil {
			return n, err
		}
		n.w, n.wdt = ptr, p.Weight.DType
	}
	return n, nil
}

// fusedMV launches one fused matrix-vector kernel: the products of x (row
// p / xdiv for pair p < P) with up to four weights of one format (glu:
// exactly two, gate and up, y = gelu(x·gateᵀ)·(x·upᵀ) into segs[0].y).
// Each segment's rows must be a multiple of the rows per warp chosen here.
func (b *Backend) fusedMV(segs []mvSeg, glu bool, x kernels.Tensor, xp cuda.DevicePtr, xdiv int, n mvNormArgs, softcap float32,
	ids cuda.DevicePtr, nexp, P int, wstride, gstride int64) error {
	w0 := segs[0].w
	K, bits := w0.K, w0.Bits
	e := 128 / bits
	smem := (K/e)*(e+4)*4 + (K/e)*2*4
	if n.w != 0 {
		smem += K * 4 // the norm weight as f32 (nws in qmvx)
	}
	if smem > b.props.MaxSharedOptin {
		return fmt.Errorf("cuda: fused matvec of K %d needs %d bytes of shared memory", K, smem)
	}
	if P > maxBlocksY {
		return fmt.Errorf("cuda: %d matrix-vector products in one launch (at most %d)", P, maxBlocksY)
	}
	if b.tcMVOK(segs, glu, x, n) {
		return b.qmvt(segs, glu, x, xp, xdiv, n, softcap, ids, nexp, P, wstride, gstride)
	}
	NT := 0
	for _, s := range segs {
		NT += s.w.N
	}
	if glu {
		NT = w0.N
	}
	// Rows per warp: the old rule (halve while the launch has under two
	// blocks per SM), or a larger R where that gives each warp fewer row
	// groups, the chain of dependent loads that bounds these small launches
	// (q/k/v: 8192 rows at R = 2 left some warps two row groups; R = 4 one).
	maxR := 4
	if glu {
		maxR = 2
	}
	depth := 2
	switch {
	case b.mvDepth == 2:
	case b.mvDepth == 3 || ids == 0:
		depth = 3
	}
	kernel := func(R int) string {
		name := fmt.Sprintf("qmvx%d_r%d", bits, R)
		if glu {
			name = fmt.Sprintf("glu%d_r%d", bits, R)
		}
		if depth == 3 {
			name += "_d3"
		}
		return name
	}
	divides := func(R int) bool {
		for _, s := range segs {
			if s.w.N%R != 0 {
				return false
			}
		}
		return true
	}
	groupsPerWarp := func(R int) int {
		NG := NT / R
		gx := max(1, min(ceilDiv(NG, QMVWarps), ceilDiv(b.props.SMs*b.occupancy("matmul", kernel(R), 256, smem), P)))
		return ceilDiv(NG, QMVWarps*gx)
	}
	R := maxR
	for R > 1 && (!divides(R) || ceilDiv(NT, QMVWarps*R)*P < 2*b.props.SMs) {
		R /= 2
	}
	for c := maxR; c > R; c /= 2 {
		if divides(c) && groupsPerWarp(c) < groupsPerWarp(R) {
			R = c
			break
		}
	}
	name := kernel(R)
	// Few rows (the router's 128): KS warps share each row, each taking a
	// KS-th of its chunks, while the launch would leave SMs idle.
	ks := 1
	if !glu && R == 1 {
		if b.mvKS > 0 {
			ks = b.mvKS
		}
		chunks := K / e // 16-byte chunks of a row
		for b.mvKS == 0 && ks < QMVWarps && ceilDiv(NT, QMVWarps/ks)*P < b.props.SMs && chunks > 32*ks {
			ks *= 2
		}
		if ks > 1 {
			name = fmt.Sprintf("qmvx%d_r1_k%d", bits, ks)
		}
	}
	blocksX := ceilDiv(NT, QMVWarps/ks*R)
	capBlocks := b.props.SMs * b.occupancy("matmul", name, 256, smem)
	gx := max(1, min(blocksX, ceilDiv(capBlocks, P)))
	a := b.args.Reset().Blob(mvParams(segs, x, xp, xdiv, n, softcap, ids, nexp, wstride, gstride, 1))
	return b.launch("matmul", name, cuda.Dim3{X: gx, Y: P, Z: 1}, block256, smem, a)
}

// tcMVOK reports whether qmvt (matmul.cu: 4-bit products on the tensor
// cores) takes a matrix-vector launch: 4-bit weights in groups of 32, 64 or
// 128, K a multiple of 32, every segment whole tiles (16 rows, 8 for GLU),
// and x staged exactly as bf16 — a bf16 x without a norm, or a norm whose
// result is rounded to bf16 — on a GPU with bf16 mma, for products of at
// least qmvtMinBytes (any size where tests force the kernel: mvKernel).
func (b *Backend) tcMVOK(segs []mvSeg, glu bool, x kernels.Tensor, n mvNormArgs) bool {
	w0 := segs[0].w
	if b.mvNoTC || b.props.Major < 8 || w0.Bits != 4 || w0.K%32 != 0 || (w0.Group != 32 && w0.Group != 64 && w0.Group != 128) {
		return false
	}
	staged := n.xrdt
	if n.off {
		staged = x.DType
	}
	if staged != dtype.BF16 {
		return false
	}
	tile := 16
	if glu {
		tile = 8
	}
	for _, s := range segs {
		if s.w.N%tile != 0 || !sameFormat(s.w, w0) {
			return false
		}
	}
	if qmvtSmem(w0, n) > b.props.MaxSharedOptin {
		return false
	}
	return b.mvKernel == mvTC || int64(qmvtRows(segs, glu))*int64(w0.K)/2 >= qmvtMinBytes
}

// qmvtRows is the number of weight rows a qmvt launch multiplies: the
// segments' rows, or gate and up rows for GLU.
func qmvtRows(segs []mvSeg, glu bool) int {
	if glu {
		return 2 * segs[0].w.N
	}
	rows := 0
	for _, s := range segs {
		rows += s.w.N
	}
	return rows
}

// qmvtSmem is the dynamic shared memory of a qmvt launch: the warps' rings
// of weight chunks (qmvtDepth steps of four 16-byte chunks a lane), x
// staged as the 8-bit kernels stage it, its bf16 repacking (chunks of
// QMVT_XB words), the group sums, and the norm weight as f32 (see qmvt in
// matmul.cu).
func qmvtSmem(w *kernels.Weight, n mvNormArgs) int {
	c8, c := w.K/16, w.K/32
	smem := QMVWarps*qmvtDepth*4*32*16 + (c8*20+2*c8+(c+1)*20+w.K/w.Group)*4
	if !n.off && n.w != 0 {
		smem += w.K * 4
	}
	return smem
}

// qmvtMinBytes is the least weight bytes a product takes to run on the
// tensor cores. Below it (every decode projection; the LM head is above)
// the CUDA-core kernels are faster: their staging is lighter and their
// warps reach the weights sooner (H200: q/k/v 10.0 against 10.9 us, the
// experts' gate/up 14.7 against 16.4; the 4-bit LM head 143.6 against
// 128.2 in the other direction).
const qmvtMinBytes = 64 << 20

// qmvtDepth is QMVT_DEPTH of matmul.cu: the steps of weight loads in flight.
const qmvtDepth = 3

// qmvt launches the tensor-core matrix-vector kernel (tcMVOK says when it
// applies) with fusedMV's arguments. A tile of 16 rows takes one warp, or
// KS warps that split its K where the tiles alone would leave the GPU's
// warp slots idle (the slices meet in shared memory).
func (b *Backend) qmvt(segs []mvSeg, glu bool, x kernels.Tensor, xp cuda.DevicePtr, xdiv int, n mvNormArgs, softcap float32,
	ids cuda.DevicePtr, nexp, P int, wstride, gstride int64) error {
	w0 := segs[0].w
	smem := qmvtSmem(w0, n) // tcMVOK checked that it fits
	tiles := qmvtRows(segs, glu) / 16
	name := "qmvt4"
	if glu {
		name = "qmvt4_glu"
	}
	switch w0.Scales.DType {
	case dtype.F16:
		name += "_h"
	case dtype.F32:
		name += "_s4"
	}
	occ := b.occupancy("matmul", name, 256, smem)
	steps := ceilDiv(w0.K/32, 8)
	ks := 1
	for ks < QMVWarps && tiles*P*ks < b.props.SMs*occ*QMVWarps && ceilDiv(steps, 2*ks)*(2*ks-1) < steps {
		ks *= 2
	}
	groups := ceilDiv(tiles, QMVWarps/ks)
	gx := max(1, min(groups, ceilDiv(b.props.SMs*occ, P)))
	a := b.args.Reset().Blob(mvParams(segs, x, xp, xdiv, n, softcap, ids, nexp, wstride, gstride, ks))
	return b.launch("matmul", name, cuda.Dim3{X: gx, Y: P, Z: 1}, block256, smem, a)
}

// mvParams lays out struct MVParams (matmul.cu) for a fused matrix-vector
// launch.
func mvParams(segs []mvSeg, x kernels.Tensor, xp cuda.DevicePtr, xdiv int, n mvNormArgs, softcap float32,
	ids cuda.DevicePtr, nexp int, wstride, gstride int64, ks int) []byte {
	w0 := segs[0].w
	var words [mvWords]uint64
	start := 0
	for i, s := range segs {
		o := i * mvSegWords
		words[o], words[o+1], words[o+2], words[o+3] = uint64(s.data), uint64(s.sc), uint64(s.bi), uint64(s.yp)
		words[o+4], words[o+5], words[o+6] = uint64(start), uint64(s.w.N), uint64(s.y.DType)
		start += s.w.N
	}
	words[mvNseg], words[mvK], words[mvGroup], words[mvSdt] = uint64(len(segs)), uint64(w0.K), uint64(w0.Group), uint64(w0.Scales.DType)
	words[mvX], words[mvXdt], words[mvXdiv] = uint64(xp), uint64(x.DType), uint64(max(xdiv, 1))
	words[mvNw], words[mvNwdt], words[mvNorm], words[mvXrdt] = uint64(n.w), uint64(n.wdt), 1, uint64(n.xrdt)
	if n.off {
		words[mvNw], words[mvNorm] = 0, 0
	}
	words[mvEps], words[mvNscale], words[mvSoftcap] = math.Float64bits(float64(n.eps)), math.Float64bits(float64(n.scale)),
		math.Float64bits(float64(softcap))
	words[mvIds], words[mvNexp], words[mvWstride], words[mvGstride] = uint64(ids), uint64(nexp), uint64(wstride), uint64(gstride)
	words[mvKS] = uint64(ks)
	raw := make([]byte, 8*mvWords)
	for i, v := range words {
		binary.LittleEndian.PutUint64(raw[8*i:], v)
	}
	return raw
}

// NormMatMul computes ys[i] = norm(x)·ws[i]ᵀ (see kernels.Fuser). For one
// token, each run of up to four consecutive weights of one format (4 or 8
// bits) is one launch that norms x in its staging; other weights and shapes
// take the plain ops.
func (b *Backend) NormMatMul(ys []kernels.Tensor, ws []*kernels.Weight, x kernels.Tensor, np kernels.NormParams, softcap float32) error {
	if len(ys) != len(ws) || len(ys) == 0 {
		return fmt.Errorf("cuda: NormMatMul of %d outputs and %d weights", len(ys), len(ws))
	}
	if err := floatArg(x, "NormMatMul x"); err != nil {
		return err
	}
	M, K := x.Rows(), x.Cols()
	for i, w := range ws {
		if err := w.Validate(); err != nil {
			return err
		}
		if w.Experts != 0 || w.K != K {
			return fmt.Errorf("cuda: NormMatMul weight %d [%d, %d] (experts %d) for x%v", i, w.N, w.K, w.Experts, x.Shape)
		}
		if err := floatArg(ys[i], "NormMatMul y"); err != nil {
			return err
		}
		if ys[i].Rows() != M || ys[i].Cols() != w.N {
			return fmt.Errorf("cuda: NormMatMul y%v = x%v·Wᵀ with W [%d, %d]", ys[i].Shape, x.Shape, w.N, w.K)
		}
	}
	if M != 1 {
		return b.unfused().NormMatMul(ys, ws, x, np, softcap)
	}
	var slowY []kernels.Tensor
	var slowW []*kernels.Weight
	err := b.locked(func() error {
		xp, err := b.dev(x, "NormMatMul x")
		if err != nil {
			return err
		}
		n, err := b.normArgs(np, K)
		if err != nil {
			return err
		}
		var run []mvSeg
		flush := func() error {
			if len(run) == 0 {
				return nil
			}
			err := b.fusedMV(run, false, x, xp, 1, n, softcap, 0, 0, 1, 0, 0)
			run = run[:0]
			return err
		}
		for i, w := range ws {
			data, sc, bi, err := b.weightPtrs(w)
			if err != nil {
				return err
			}
			yp, err := b.dev(ys[i], "NormMatMul y")
			if err != nil {
				return err
			}
			if !fusedMVOK(w, data) {
				slowY, slowW = append(slowY, ys[i]), append(slowW, w)
				continue
			}
			if len(run) > 0 && (!sameFormat(run[0].w, w) || len(run) == 4) {
				if err := flush(); err != nil {
					return err
				}
			}
			run = append(run, mvSeg{w: w, data: data, sc: sc, bi: bi, y: ys[i], yp: yp})
		}
		return flush()
	})
	if err != nil || len(slowW) == 0 {
		return err
	}
	return b.unfused().NormMatMul(slowY, slowW, x, np, softcap)
}

// NormGLU computes y = gelu(norm(x)·gateᵀ)·(norm(x)·upᵀ) (see
// kernels.Fuser) in one launch for one token (dense) or the experts of one
// or two tokens (ids on the device).
func (b *Backend) NormGLU(y kernels.Tensor, gate, up *kernels.Weight, ids, x kernels.Tensor, np kernels.NormParams) error {
	for _, w := range []*kernels.Weight{gate, up} {
		if err := w.Validate(); err != nil {
			return err
		}
	}
	if gate.N != up.N || gate.K != up.K || gate.Experts != up.Experts {
		return fmt.Errorf("cuda: NormGLU gate [%d, %d]×%d and up [%d, %d]×%d differ", gate.N, gate.K, gate.Experts, up.N, up.K, up.Experts)
	}
	if err := floatArg(x, "NormGLU x"); err != nil {
		return err
	}
	if err := floatArg(y, "NormGLU y"); err != nil {
		return err
	}
	M, K, N := x.Rows(), x.Cols(), gate.N
	if K != gate.K {
		return fmt.Errorf("cuda: NormGLU x%v for K %d", x.Shape, gate.K)
	}
	P, xdiv := M, 1
	if gate.Experts > 0 {
		if err := i32Arg(ids, "NormGLU ids"); err != nil {
			return err
		}
		if ids.Rows() != M {
			return fmt.Errorf("cuda: NormGLU ids%v for x%v", ids.Shape, x.Shape)
		}
		P, xdiv = ids.Numel(), ids.Cols()
	}
	if y.Numel() != P*N || y.Cols() != N {
		return fmt.Errorf("cuda: NormGLU y%v (want %d rows of %d)", y.Shape, P, N)
	}
	fast := (gate.Experts == 0 && M == 1) || (gate.Experts > 0 && M <= 2)
	fast = fast && sameFormat(gate, up) && gate.DataStride == up.DataStride && gate.GroupStride == up.GroupStride
	if fast {
		done := false
		err := b.locked(func() error {
			var segs [2]mvSeg
			for i, w := range []*kernels.Weight{gate, up} {
				data, sc, bi, err := b.weightPtrs(w)
				if err != nil {
					return err
				}
				if !fusedMVOK(w, data) {
					return nil
				}
				if w.Experts > 0 {
					if err := b.checkExpertsInBuffer(w); err != nil {
						return err
					}
				}
				segs[i] = mvSeg{w: w, data: data, sc: sc, bi: bi}
			}
			xp, err := b.dev(x, "NormGLU x")
			if err != nil {
				return err
			}
			yp, err := b.dev(y, "NormGLU y")
			if err != nil {
				return err
			}
			segs[0].y, segs[0].yp = y, yp
			segs[1].y, segs[1].yp = y, yp
			n, err := b.normArgs(np, K)
			if err != nil {
				return err
			}
			var idp cuda.DevicePtr
			if gate.Experts > 0 {
				if idp, err = b.dev(ids, "NormGLU ids"); err != nil {
					return err
				}
			}
			done = true
			if P == 0 {
				return nil
			}
			return b.fusedMV(segs[:], true, x, xp, xdiv, n, 0, idp, gate.Experts, P, gate.DataStride, gate.GroupStride)
		})
		if err != nil || done {
			return err
		}
	}
	if ok, err := b.normGLUGEMM(y, gate, up, ids, x, np, M, P, xdiv); ok || err != nil {
		return err
	}
	return b.unfused().NormGLU(y, gate, up, ids, x, np)
}

// normGLUGEMM runs NormGLU of several tokens as the norm and one GLU GEMM:
// each block stages one x tile and both weights' tiles and stores the gated
// GeLU of the two products (the gate/up pair through gemm_q*_glu; experts
// sorted by moe_sort once). ok is false where it does not apply: then the
// plain ops run (matrix-vector products of few tokens, other formats).
func (b *Backend) normGLUGEMM(y kernels.Tensor, gate, up *kernels.Weight, ids, x kernels.Tensor, np kernels.NormParams,
	M, P, xdiv int) (ok bool, err error) {
	K := gate.K
	xdt := np.XDType
	if np.Off {
		xdt = x.DType
	}
	if b.props.Major < 8 || b.gemmPlain || xdt != dtype.BF16 || !sameFormat(gate, up) ||
		(gate.Bits != 4 && gate.Bits != 8) || K%32 != 0 ||
		gate.DataStride != up.DataStride || gate.GroupStride != up.GroupStride {
		return false, nil
	}
	if gate.Experts > 0 {
		if b.mvPairs(M, P, gate.Experts) {
			return false, nil
		}
	} else if b.mvRows(M, kernels.Tensor{DType: dtype.BF16}, gate) || ceilDiv(M, 64)*ceilDiv(gate.N, 64) < b.props.SMs {
		return false, nil // few rows: matrix-vector products, or GEMMs with split K
	}
	var ptr [2][3]cuda.DevicePtr
	for i, w := range []*kernels.Weight{gate, up} {
		if err := b.locked(func() error {
			d, sc, bi, err := b.weightPtrs(w)
			ptr[i] = [3]cuda.DevicePtr{d, sc, bi}
			return err
		}); err != nil {
			return false, err
		}
		if ptr[i][0]%16 != 0 || w.DataStride%16 != 0 {
			return false, nil
		}
	}
	xn := x
	if !np.Off {
		if xn, err = b.Alloc(dtype.BF16, M, K); err != nil {
			return true, err
		}
		defer b.Free(xn)
		if err := b.RMSNorm(xn, x, np.Weight, np.Eps); err != nil {
			return true, err
		}
		if np.Scale != 0 && np.Scale != 1 {
			if err := b.Scale(xn, xn, np.Scale); err != nil {
				return true, err
			}
		}
	}
	return true, b.locked(func() error {
		xp, err := b.dev(xn, "NormGLU x")
		if err != nil {
			return err
		}
		yp, err := b.dev(y, "NormGLU y")
		if err != nil {
			return err
		}
		u := &gemmUp{data: ptr[1][0], sc: ptr[1][1], bi: ptr[1][2]}
		if gate.Experts == 0 {
			return b.gemm(y, xn, yp, xp, gate, ptr[0][0], ptr[0][1], ptr[0][2], M, 0, 0, 0, 1, 0, 0, u)
		}
		if err := b.checkExpertsInBuffer(gate); err != nil {
			return err
		}
		if err := b.checkExpertsInBuffer(up); err != nil {
			return err
		}
		idp, err := b.dev(ids, "NormGLU ids")
		if err != nil {
			return err
		}
		perm, tiles, maxTiles, release, err := b.sortPairs(idp, P, gate.Experts)
		if err != nil {
			return err
		}
		defer release()
		return b.gemm(y, xn, yp, xp, gate, ptr[0][0], ptr[0][1], ptr[0][2], P, perm, tiles, maxTiles, xdiv,
			gate.DataStride, gate.GroupStride, u)
	})
}

// AttentionPrep runs q_norm, RoPE, v_norm, k_norm and the cache stores of
// T tokens in one launch (see kernels.Fuser).
func (b *Backend) AttentionPrep(q, k, v kernels.Tensor, p kernels.AttentionPrepParams) error {
	T, D := p.Positions.Numel(), p.HeadDim
	if err := i32Arg(p.Positions, "AttentionPrep positions"); err != nil {
		return err
	}
	if err := floatArg(p.InvFreq, "AttentionPrep inverse frequencies"); err != nil {
		return err
	}
	if err := floatArg(q, "AttentionPrep q"); err != nil {
		return err
	}
	if D <= 0 || D%2 != 0 || p.InvFreq.Numel() != D/2 || p.Heads <= 0 || q.Numel() != T*p.Heads*D {
		return fmt.Errorf("cuda: AttentionPrep q%v for %d positions of %d heads × %d (%d frequencies)", q.Shape, T, p.Heads, D, p.InvFreq.Numel())
	}
	hasK := !k.IsZero()
	if hasK {
		for _, c := range []struct {
			t kernels.Tensor
			n string
		}{{k, "k"}, {v, "v"}, {p.KCache, "k cache"}, {p.VCache, "v cache"}} {
			if err := floatArg(c.t, "AttentionPrep "+c.n); err != nil {
				return err
			}
		}
		w := p.KVHeads * D
		if p.KVHeads <= 0 || k.Numel() != T*w || v.Numel() != T*w {
			return fmt.Errorf("cuda: AttentionPrep k%v v%v for %d positions of %d kv heads × %d", k.Shape, v.Shape, T, p.KVHeads, D)
		}
		if p.KCache.Cols() != w || p.VCache.Cols() != w || p.KCache.Rows() != p.VCache.Rows() || p.KCache.DType != p.VCache.DType {
			return fmt.Errorf("cuda: AttentionPrep caches k%v %s v%v %s for width %d", p.KCache.Shape, p.KCache.DType, p.VCache.Shape, p.VCache.DType, w)
		}
	}
	for _, t := range []kernels.Tensor{p.QNorm, p.KNorm} {
		if !t.IsZero() && (!t.DType.IsFloat() || t.Numel() != D) {
			return fmt.Errorf("cuda: AttentionPrep norm weight %s%v for head dim %d", t.DType, t.Shape, D)
		}
	}
	if T == 0 {
		return nil
	}
	if T > maxBlocksY || D > 8192 {
		return b.unfused().AttentionPrep(q, k, v, p)
	}
	return b.locked(func() error {
		ptr := func(t kernels.Tensor, what string) (cuda.DevicePtr, int, error) {
			if t.IsZero() {
				return 0, 0, nil
			}
			d, err := b.dev(t, what)
			return d, int(t.DType), err
		}
		qp, qdt, err := ptr(q, "AttentionPrep q")
		if err != nil {
			return err
		}
		qn, qndt, err := ptr(p.QNorm, "AttentionPrep q_norm")
		if err != nil {
			return err
		}
		pos, _, err := ptr(p.Positions, "AttentionPrep positions")
		if err != nil {
			return err
		}
		inv, fdt, err := ptr(p.InvFreq, "AttentionPrep frequencies")
		if err != nil {
			return err
		}
		var kp, vp, kn, kc, vc cuda.DevicePtr
		var kdt, vdt, kndt, cdt, capacity int
		blocks := p.Heads
		if hasK {
			blocks += p.KVHeads
			if kp, kdt, err = ptr(k, "AttentionPrep k"); err != nil {
				return err
			}
			if vp, vdt, err = ptr(v, "AttentionPrep v"); err != nil {
				return err
			}
			if kn, kndt, err = ptr(p.KNorm, "AttentionPrep k_norm"); err != nil {
				return err
			}
			if kc, cdt, err = ptr(p.KCache, "AttentionPrep k cache"); err != nil {
				return err
			}
			if vc, _, err = ptr(p.VCache, "AttentionPrep v cache"); err != nil {
				return err
			}
			capacity = p.KCache.Rows()
		}
		keqv := 0
		if p.KEqV {
			keqv = 1
		}
		// The thread count of RMSNorm over rows of D: the same sums, bit for bit.
		threads := min(1024, max(32, ceilDiv(D, 4*32)*32))
		a := b.args.Reset()
		a.Ptr(qp).I32(qdt).Ptr(kp).I32(kdt).Ptr(vp).I32(vdt).Ptr(qn).I32(qndt).Ptr(kn).I32(kndt).Ptr(pos).Ptr(inv).I32(fdt).
			Ptr(kc).Ptr(vc).I32(cdt).I32(max(capacity, 1)).I32(p.Heads).I32(p.KVHeads).I32(D).I32(keqv).F32(p.Eps)
		return b.launch("elementwise", "attn_prep", cuda.Dim3{X: blocks, Y: T, Z: 1}, cuda.Dim3{X: threads, Y: 1, Z: 1}, 2*D*4, a)
	})
}

// AddRMSNorm computes h = h + norm(a)·w (then ·scale) in one launch.
func (b *Backend) AddRMSNorm(h, a, w kernels.Tensor, eps, scale float32, outs ...kernels.NormOut) error {
	if err := floatArg(h, "AddRMSNorm h"); err != nil {
		return err
	}
	if err := floatArg(a, "AddRMSNorm a"); err != nil {
		return err
	}
	cols := a.Cols()
	if h.Numel() != a.Numel() || h.Cols() != cols {
		return fmt.Errorf("cuda: AddRMSNorm h%v with a%v", h.Shape, a.Shape)
	}
	if !w.IsZero() && (!w.DType.IsFloat() || w.Numel() != cols) {
		return fmt.Errorf("cuda: AddRMSNorm weight %s%v for rows of %d", w.DType, w.Shape, cols)
	}
	threads := min(1024, max(32, ceilDiv(cols, 4*32)*32)) // RMSNorm's: the same sums
	if cols > epiMax*threads || len(outs) > normOutsMax {
		return b.unfused().AddRMSNorm(h, a, w, eps, scale, outs...)
	}
	return b.locked(func() error {
		ptrs, err := b.devs([]kernels.Tensor{h, a}, "AddRMSNorm h", "AddRMSNorm a")
		if err != nil {
			return err
		}
		E := 4
		if epiKernel("add_rmsnorm", threads) == "add_rmsnorm" {
			E = epiMax
		}
		oa, osmem, err := b.normOutsArg(outs, h, E, threads)
		if err != nil {
			return err
		}
		var wp cuda.DevicePtr
		wdt := 0
		if !w.IsZero() {
			if wp, err = b.dev(w, "AddRMSNorm weight"); err != nil {
				return err
			}
			wdt = int(w.DType)
		}
		if a.Rows() == 0 || cols == 0 {
			return nil
		}
		args := b.args.Reset()
		args.Ptr(ptrs[0]).I32(int(h.DType)).Ptr(ptrs[1]).I32(int(a.DType)).Ptr(wp).I32(wdt).I32(cols).F32(eps).F32(scale).Blob(oa)
		return b.launch("elementwise", epiKernel("add_rmsnorm", threads), cuda.Dim3{X: a.Rows(), Y: 1, Z: 1}, cuda.Dim3{X: threads, Y: 1, Z: 1}, osmem, args)
	})
}

// epiMax is EPI_MAX of elementwise.cu: values per thread of add_rmsnorm
// and moe_epilogue.
const epiMax = 8

// normOutsMax is NORM_OUTS of elementwise.cu: the most kernels.NormOut one
// add_rmsnorm or moe_epilogue launch writes (more take the plain ops).
const normOutsMax = 3

// normOutsArg lays out struct NormOuts (elementwise.cu) for outs, each a
// normed copy of h, and returns the shared memory their weights take at E
// values a thread of threads.
func (b *Backend) normOutsArg(outs []kernels.NormOut, h kernels.Tensor, E, threads int) ([]byte, int, error) {
	var w [4*normOutsMax + 2*normOutsMax + 1]uint64 // y, w, ydt, wdt, eps, scale, n
	for i, o := range outs {
		if o.Norm.Off {
			return nil, 0, fmt.Errorf("cuda: NormOut %d with Off", i)
		}
		if err := floatArg(o.Y, "NormOut y"); err != nil {
			return nil, 0, err
		}
		if o.Y.Numel() != h.Numel() || o.Y.Cols() != h.Cols() {
			return nil, 0, fmt.Errorf("cuda: NormOut y%v for h%v", o.Y.Shape, h.Shape)
		}
		yp, err := b.dev(o.Y, "NormOut y")
		if err != nil {
			return nil, 0, err
		}
		w[i], w[2*normOutsMax+i] = uint64(yp), uint64(o.Y.DType)
		if nw := o.Norm.Weight; !nw.IsZero() {
			if !nw.DType.IsFloat() || nw.Numel() != h.Cols() {
				return nil, 0, fmt.Errorf("cuda: NormOut weight %s%v for rows of %d", nw.DType, nw.Shape, h.Cols())
			}
			wp, err := b.dev(nw, "NormOut weight")
			if err != nil {
				return nil, 0, err
			}
			w[normOutsMax+i], w[3*normOutsMax+i] = uint64(wp), uint64(nw.DType)
		}
		w[4*normOutsMax+i] = math.Float64bits(float64(o.Norm.Eps))
		w[5*normOutsMax+i] = math.Float64bits(float64(o.Norm.Scale))
	}
	w[6*normOutsMax] = uint64(len(outs))
	raw := make([]byte, 8*len(w))
	for i, v := range w {
		binary.LittleEndian.PutUint64(raw[8*i:], v)
	}
	return raw, len(outs) * E * threads * 4, nil
}

// epiKernel names the variant of add_rmsnorm or moe_epilogue for a block
// of threads: "_e4" (4 values a thread, registers for all loads at once)
// up to 768 threads, where rows of RMSNorm's thread count have at most 4.
func epiKernel(name string, threads int) string {
	if threads <= 768 {
		return name + "_e4"
	}
	return name
}

// MoEEpilogue ends a MoE layer (see kernels.Fuser) in one launch per row
// block: three norms, the combine, two adds and the layer scalar.
func (b *Backend) MoEEpilogue(h, d, down, weights kernels.Tensor, p kernels.MoEEpilogueParams, outs ...kernels.NormOut) error {
	for _, c := range []struct {
		t kernels.Tensor
		n string
	}{{h, "h"}, {d, "d"}, {down, "down"}} {
		if err := floatArg(c.t, "MoEEpilogue "+c.n); err != nil {
			return err
		}
	}
	if weights.DType != dtype.F32 {
		return fmt.Errorf("cuda: MoEEpilogue weights have dtype %s (want F32)", weights.DType)
	}
	M, N, k := d.Rows(), d.Cols(), weights.Cols()
	if h.Numel() != M*N || h.Cols() != N || weights.Rows() != M || down.Numel() != M*k*N || down.Cols() != N {
		return fmt.Errorf("cuda: MoEEpilogue h%v d%v down%v weights%v", h.Shape, d.Shape, down.Shape, weights.Shape)
	}
	for _, w := range []kernels.Tensor{p.Post1, p.Post2, p.PostFF} {
		if !w.IsZero() && (!w.DType.IsFloat() || w.Numel() != N) {
			return fmt.Errorf("cuda: MoEEpilogue norm weight %s%v for rows of %d", w.DType, w.Shape, N)
		}
	}
	threads := min(1024, max(32, ceilDiv(N, 4*32)*32)) // RMSNorm's: the same sums
	if N > epiMax*threads || len(outs) > normOutsMax {
		return b.unfused().MoEEpilogue(h, d, down, weights, p, outs...)
	}
	return b.locked(func() error {
		ptrs, err := b.devs([]kernels.Tensor{h, d, down, weights}, "MoEEpilogue h", "MoEEpilogue d", "MoEEpilogue down", "MoEEpilogue weights")
		if err != nil {
			return err
		}
		var wp [3]cuda.DevicePtr
		var wdt [3]int
		for i, w := range []kernels.Tensor{p.Post1, p.Post2, p.PostFF} {
			if !w.IsZero() {
				if wp[i], err = b.dev(w, "MoEEpilogue norm weight"); err != nil {
					return err
				}
				wdt[i] = int(w.DType)
			}
		}
		name, smem, E := epiKernel("moe_epilogue", threads), 0, epiMax
		if name != "moe_epilogue" {
			smem, E = 3*4*threads*4, 4 // the _e4 variant keeps its three norm weights (4 a thread, f32) in shared memory
		}
		oa, osmem, err := b.normOutsArg(outs, h, E, threads)
		if err != nil {
			return err
		}
		if M == 0 || N == 0 {
			return nil
		}
		a := b.args.Reset()
		a.Ptr(ptrs[0]).I32(int(h.DType)).Ptr(ptrs[1]).I32(int(d.DType)).Ptr(ptrs[2]).I32(int(down.DType)).Ptr(ptrs[3]).I32(k).
			Ptr(wp[0]).I32(wdt[0]).Ptr(wp[1]).I32(wdt[1]).Ptr(wp[2]).I32(wdt[2]).I32(N).F32(p.Eps).F32(p.Scale).Blob(oa)
		return b.launch("elementwise", name, cuda.Dim3{X: M, Y: 1, Z: 1}, cuda.Dim3{X: threads, Y: 1, Z: 1}, smem+osmem, a)
	})
}
