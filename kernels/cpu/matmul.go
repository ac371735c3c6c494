package cpu

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// mmSeg is one 2D weight matrix of a matmul call (the weight, or one expert of
// a 3D weight) with the (x row, y row) pairs that multiply it.
type mmSeg struct {
	data, scales, biases []byte
	p0, p1               int // pairs[p0:p1]
}

// mmPair names an input row and an output row of a matmul.
type mmPair struct{ x, y int32 }

// mmJob is the matmul work of one call, spread over the pool by weight rows:
// item r is row r%N of segment r/N.
type mmJob struct {
	b                *Backend
	n, k, g          int // output rows, input width, groups per row (quantized)
	bits, group      int
	wdt, sdt         dtype.DType // data dtype (dense) and scales/biases dtype
	x, xsum          []float64   // input rows widened, per-group sums of x
	y                []float32
	segs             []mmSeg
	pairs            []mmPair
	f16              *[1 << 16]float32
	rowBytes, gBytes int // bytes per weight row and per row of scales

	// SIMD path (fast != nil): the kernels, the f32 input rows as given
	// (xin) and as the kernels read them (xf, rows of xw floats).
	fast    *[2]func(*kargs)
	mid     *[2]func(*kargs) // f32 sums: two and three input rows (nil: none)
	int8    bool             // the integer kernels: int8 activations, or int24 ones
	int24   bool             // the int24-activation kernels (int8 is set too)
	f32     bool             // the f32-sum quantized kernels
	lanes   int
	xin     []float32
	xf      []float64
	xw      int            // doubles per row of xf
	xbase   unsafe.Pointer // the kernels' input rows
	xstride int            // bytes between them
}

func (j *mmJob) run(w, lo, hi int) {
	ws := &j.b.ws[w]
	n := j.n
	for r := lo; r < hi; {
		s := r / n
		seg := &j.segs[s]
		end := min(hi, (s+1)*n)
		pairs := j.pairs[seg.p0:seg.p1]
		if j.fast != nil {
			j.rowsFast(seg, pairs, r-s*n, end-s*n, ws)
		} else if len(pairs) == 1 || (j.bits != 0 && len(pairs) <= fusedMaxPairs) {
			j.rowsFused(seg, pairs, r-s*n, end-s*n, ws)
		} else {
			j.rowsMany(seg, pairs, r-s*n, end-s*n, ws)
		}
		r = end
	}
}

// fusedMaxPairs is the most input rows for which a quantized weight row is
// reduced straight from its packed words once per input row rather than
// dequantized once (expanding costs about as much as a few fused products in
// scalar Go).
const fusedMaxPairs = 6

// rowsFused computes rows [r0, r1) of a segment for each of its input rows
// with the fused kernels, which read the weight rows straight from the
// weights.
func (j *mmJob) rowsFused(seg *mmSeg, pairs []mmPair, r0, r1 int, ws *workerScratch) {
	k, n := j.k, j.n
	if j.bits == 0 {
		for row := r0; row < r1; row++ {
			wrow := seg.data[row*j.rowBytes : (row+1)*j.rowBytes]
			for _, p := range pairs {
				j.y[int(p.y)*n+row] = float32(j.denseDot(wrow, j.x[int(p.x)*k:int(p.x)*k+k]))
			}
		}
		return
	}
	// Per-group Σq·x, then scale·Σq·x + bias·Σx.
	gs := ws.gsum[:j.g]
	for row := r0; row < r1; row++ {
		wrow := asU32(seg.data[row*j.rowBytes : (row+1)*j.rowBytes])
		sc, bi := seg.scales[row*j.gBytes:(row+1)*j.gBytes], seg.biases[row*j.gBytes:(row+1)*j.gBytes]
		for _, p := range pairs {
			qdot(j.bits, wrow, j.x[int(p.x)*k:int(p.x)*k+k], gs, j.group)
			j.y[int(p.y)*n+row] = float32(j.combine(gs, j.xsum[int(p.x)*j.g:int(p.x)*j.g+j.g], sc, bi))
		}
	}
}

// Blocking of the multi-input path: blockRows weight rows are expanded at a
// time and multiplied with every input row blockK columns at a time, so that
// the block's slice of weights (4·512 float64, 16 KiB) stays in the L1 cache
// while the input rows stream past.
const blockRows, blockK = 4, 512

// rowsMany computes rows [r0, r1) of a segment for several input rows: each
// block of weight rows is expanded to float64 once, then multiplied with every
// input row.
func (j *mmJob) rowsMany(seg *mmSeg, pairs []mmPair, r0, r1 int, ws *workerScratch) {
	k, n := j.k, j.n
	for row := r0; row < r1; row += blockRows {
		nb := min(blockRows, r1-row)
		for i := range nb {
			j.expand(seg, row+i, ws.row[i*k:(i+1)*k], ws)
		}
		if nb < blockRows {
			for _, p := range pairs {
				xr := j.x[int(p.x)*k : int(p.x)*k+k]
				for i := range nb {
					j.y[int(p.y)*n+row+i] = float32(dotRow(ws.row[i*k:(i+1)*k], xr))
				}
			}
			continue
		}
		acc := ws.acc64[:len(pairs)*blockRows]
		clear(acc)
		for kc := 0; kc < k; kc += blockK {
			ke := min(k, kc+blockK)
			for pi, p := range pairs {
				dot4(ws.row, k, kc, j.x[int(p.x)*k+kc:int(p.x)*k+ke], acc[pi*blockRows:(pi+1)*blockRows])
			}
		}
		for pi, p := range pairs {
			y := j.y[int(p.y)*n+row : int(p.y)*n+row+blockRows]
			for i, a := range acc[pi*blockRows : (pi+1)*blockRows] {
				y[i] = float32(a)
			}
		}
	}
}

// expand writes weight row `row` of a segment to dst: dequantized in f32
// (w = scale·q + bias, as MLX computes it), then widened.
func (j *mmJob) expand(seg *mmSeg, row int, dst []float64, ws *workerScratch) {
	wrow := seg.data[row*j.rowBytes : (row+1)*j.rowBytes]
	switch {
	case j.bits != 0:
		q := ws.q[:len(dst)]
		unpack(j.bits, asU32(wrow), q)
		j.affineRow(q, seg.scales[row*j.gBytes:(row+1)*j.gBytes], seg.biases[row*j.gBytes:(row+1)*j.gBytes], ws)
		widen(dst, q)
	case j.wdt == dtype.BF16:
		for i, h := range asU16(wrow)[:len(dst)] {
			dst[i] = float64(math.Float32frombits(uint32(h) << 16))
		}
	case j.wdt == dtype.F16:
		for i, h := range asU16(wrow)[:len(dst)] {
			dst[i] = float64(j.f16[h])
		}
	default:
		widen(dst, asF32(wrow))
	}
}

func (j *mmJob) denseDot(wrow []byte, x []float64) float64 {
	switch j.wdt {
	case dtype.BF16:
		return dotRowBF16(asU16(wrow), x)
	case dtype.F16:
		return dotRowF16(asU16(wrow), x, j.f16)
	default:
		return dotRowF32(asF32(wrow), x)
	}
}

func (j *mmJob) combine(gs, xs []float64, sc, bi []byte) float64 {
	switch j.sdt {
	case dtype.BF16:
		return combineBF16(gs, xs, asU16(sc), asU16(bi))
	case dtype.F16:
		return combineF16(gs, xs, asU16(sc), asU16(bi), j.f16)
	default:
		return combineF32(gs, xs, asF32(sc), asF32(bi))
	}
}

// affineRow applies a row's scales and biases (raw bytes of dtype j.sdt) to
// the unpacked values q.
func (j *mmJob) affineRow(q []float32, sc, bi []byte, ws *workerScratch) {
	s, b := ws.sc[:j.g], ws.bi[:j.g]
	groupParams(j.sdt, sc, s, j.f16)
	groupParams(j.sdt, bi, b, j.f16)
	affine(q, s, b, j.group)
}

// groupParams converts a row of scales or biases to f32.
func groupParams(dt dtype.DType, raw []byte, dst []float32, tab *[1 << 16]float32) {
	switch dt {
	case dtype.BF16:
		bf16ToF32(dst, asU16(raw))
	case dtype.F16:
		for i, h := range asU16(raw)[:len(dst)] {
			dst[i] = tab[h]
		}
	default:
		copy(dst, asF32(raw))
	}
}

// checkWeight validates w for a matmul: its own consistency, the dtypes this
// backend reads, and that the first matrix lies in its buffers. It returns the
// data, scales and biases bytes of the first matrix (expert 0 for 3D).
func (b *Backend) checkWeight(w *kernels.Weight, op string) (data, scales, biases []byte, err error) {
	// Constant argument names (a concatenation would allocate per call).
	nData, nScales, nBiases := "weight data", "weight scales", "weight biases"
	switch op {
	case "MatMul":
		nData, nScales, nBiases = "MatMul: weight data", "MatMul: weight scales", "MatMul: weight biases"
	case "MatMulExperts":
		nData, nScales, nBiases = "MatMulExperts: weight data", "MatMulExperts: weight scales", "MatMulExperts: weight biases"
	case "Embed":
		nData, nScales, nBiases = "Embed: table data", "Embed: table scales", "Embed: table biases"
	}
	if w == nil {
		return nil, nil, nil, fmt.Errorf("cpu: %s: nil weight", op)
	}
	if err := w.Validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("cpu: %s: %w", op, err)
	}
	if data, err = b.raw(w.Data, nData, false); err != nil {
		return nil, nil, nil, err
	}
	if !w.Quantized() {
		if w.Scales.Buf != nil || w.Biases.Buf != nil {
			return nil, nil, nil, fmt.Errorf("cpu: %s: dense weight has scales or biases (Bits is 0)", op)
		}
		return data, nil, nil, nil
	}
	if w.Scales.DType != w.Biases.DType {
		return nil, nil, nil, fmt.Errorf("cpu: %s: scales %s and biases %s differ in dtype", op, w.Scales, w.Biases)
	}
	if scales, err = b.raw(w.Scales, nScales, false); err != nil {
		return nil, nil, nil, err
	}
	if biases, err = b.raw(w.Biases, nBiases, false); err != nil {
		return nil, nil, nil, err
	}
	return data, scales, biases, nil
}

// prepare fills the parts of b.mm common to MatMul and MatMulExperts and sizes
// the worker scratch.
func (b *Backend) prepare(w *kernels.Weight, x, y []float32) *mmJob {
	j := &b.mm
	j.b = b
	j.n, j.k = w.N, w.K
	j.bits, j.group = w.Bits, w.Group
	j.fast = b.ks.matmul(w.Bits, w.Group, w.Data.DType, w.Scales.DType)
	j.mid = nil
	j.int8, j.int24, j.f32 = false, false, false
	var k24 *[2]func(*kargs)
	if b.int24 {
		k24 = b.ks.int24Kernels(w.Bits, w.Group, w.Scales.DType)
	}
	switch {
	case !w.Quantized():
	case b.int8: // where the format has no int8 kernels, the float64 ones
		if k := b.ks.int8Kernels(w.Bits, w.Group, w.Scales.DType); k != nil {
			j.fast, j.int8 = k, true
		}
	case b.f64:
	case k24 != nil:
		j.fast, j.int8, j.int24 = k24, true, true
	default:
		if k := b.ks.matmulF32(w.Bits, w.Group, w.Scales.DType); k != nil {
			j.fast, j.f32 = k, true
			j.mid = b.ks.matmulF32Mid(w.Bits, w.Group, w.Scales.DType)
		}
	}
	if j.fast != nil {
		j.lanes = b.ks.lanes
		j.xin, j.y = x, y
	} else {
		b.x64 = grow64(b.x64, len(x))
		widen(b.x64, x)
		j.x, j.y = b.x64, y
	}
	j.wdt = w.Data.DType
	j.segs, j.pairs = j.segs[:0], j.pairs[:0]
	if w.Data.DType == dtype.F16 || w.Scales.DType == dtype.F16 {
		j.f16 = f16Table()
	}
	if w.Quantized() {
		j.g = w.K / w.Group
		j.sdt = w.Scales.DType
		j.rowBytes = w.K * w.Bits / 8
		j.gBytes = j.g * w.Scales.DType.Size()
		for i := range b.ws {
			ws := &b.ws[i]
			ws.gsum = grow64(ws.gsum, j.g)
			ws.sc, ws.bi = grow(ws.sc, j.g), grow(ws.bi, j.g)
			if j.fast != nil {
				ws.sb32 = grow(ws.sb32, max(2*fastBlock*j.g+8, len(ws.sb32)))
			}
		}
	} else {
		j.g, j.sdt = 0, dtype.Invalid
		j.rowBytes = w.K * w.Data.DType.Size()
		j.gBytes = 0
	}
	return j
}

// sums computes the per-group sums of the x rows that a fused quantized row
// product needs.
func (b *Backend) sums(j *mmJob, rows int) {
	if j.fast != nil {
		b.fastInputs(j, rows)
		return
	}
	if j.bits == 0 {
		return
	}
	b.xsum = grow64(b.xsum, rows*j.g)
	j.xsum = b.xsum
	for r := range rows {
		groupSums(j.x[r*j.k:(r+1)*j.k], j.xsum[r*j.g:(r+1)*j.g], j.group)
	}
}

// growRows makes sure each worker can expand a block of rows of width k and
// accumulate it for up to pairs input rows.
func (b *Backend) growRows(k, pairs int) {
	for i := range b.ws {
		b.ws[i].row = grow64(b.ws[i].row, max(blockRows*k, len(b.ws[i].row)))
		b.ws[i].acc64 = grow64(b.ws[i].acc64, max(blockRows*pairs, len(b.ws[i].acc64)))
		b.ws[i].q = grow(b.ws[i].q, max(k, len(b.ws[i].q)))
	}
}

// dispatch runs the prepared job over all weight rows of all segments.
func (b *Backend) dispatch(j *mmJob) {
	total := len(j.segs) * j.n
	// Rows are heavy (K multiply-adds): small chunks balance well.
	b.pool.parallel(total, b.pool.chunkFor(total, 8), j)
	j.x, j.y, j.xsum = nil, nil, nil
	j.xin, j.xf, j.fast, j.mid, j.xbase = nil, nil, nil, nil, nil
	for i := range j.segs {
		j.segs[i] = mmSeg{}
	}
}

// MatMul computes y[M,N] = x[M,K]·Wᵀ for a 2D weight, dense or quantized, with
// f32 accumulation. x and y may be F32, BF16 or F16; y must not overlap x.
// For M = 1 each quantized row is reduced per group straight from the packed
// words (w·x = Σ_g scale·Σq·x + bias·Σx); for M > 1 blocks of weight rows are
// dequantized once and multiplied with every row of x.
func (b *Backend) MatMul(y, x kernels.Tensor, w *kernels.Weight) error {
	if b.closed {
		return errClosed
	}
	data, scales, biases, err := b.checkWeight(w, "MatMul")
	if err != nil {
		return err
	}
	if w.Experts != 0 {
		return fmt.Errorf("cpu: MatMul: weight has %d experts (use MatMulExperts or Weight.Expert)", w.Experts)
	}
	m := x.Rows()
	if x.Cols() != w.K {
		return fmt.Errorf("cpu: MatMul: x %v has %d columns, the weight takes %d inputs", x.Shape, x.Cols(), w.K)
	}
	if y.Rows() != m || y.Cols() != w.N {
		return fmt.Errorf("cpu: MatMul: y %v should be [%d, %d] for x %v and a [%d, %d] weight", y.Shape, m, w.N, x.Shape, w.N, w.K)
	}
	xv, err := b.in(x, "MatMul: x", slotX)
	if err != nil {
		return err
	}
	yv, err := b.out(y, "MatMul: y", slotY)
	if err != nil {
		return err
	}
	if m == 0 {
		return nil
	}
	j := b.prepare(w, xv, yv)
	j.segs = append(j.segs, mmSeg{data: data, scales: scales, biases: biases, p0: 0, p1: m})
	for r := range m {
		j.pairs = append(j.pairs, mmPair{int32(r), int32(r)})
	}
	b.sums(j, m)
	if m > 1 && j.fast == nil {
		b.growRows(w.K, m)
	}
	b.dispatch(j)
	b.flush(y, yv)
	return nil
}

// MatMulExperts computes y[M,k,N] = x[m]·W[ids[m,j]]ᵀ for a 3D weight and I32
// ids [M,k]; x is [M,K] (shared by the k slots) or [M·k,K]. Ids out of range
// are an error. For M > 1 the (token, slot) pairs are grouped by expert, so
// each selected expert's weights are read once per call.
func (b *Backend) MatMulExperts(y, x kernels.Tensor, w *kernels.Weight, ids kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	if _, _, _, err := b.checkWeight(w, "MatMulExperts"); err != nil {
		return err
	}
	if w.Experts <= 0 {
		return fmt.Errorf("cpu: MatMulExperts: weight is 2D (Experts is %d); use MatMul", w.Experts)
	}
	idv, err := b.ints(ids, "MatMulExperts: ids")
	if err != nil {
		return err
	}
	if len(ids.Shape) == 0 {
		return fmt.Errorf("cpu: MatMulExperts: ids %s must be [M, k]", ids)
	}
	m, k := ids.Rows(), ids.Cols()
	if x.Cols() != w.K {
		return fmt.Errorf("cpu: MatMulExperts: x %v has %d columns, the weight takes %d inputs", x.Shape, x.Cols(), w.K)
	}
	perSlot := false
	switch x.Rows() {
	case m:
	case m * k:
		perSlot = true
	default:
		return fmt.Errorf("cpu: MatMulExperts: x %v should have %d rows (shared) or %d (one per slot) for ids %v", x.Shape, m, m*k, ids.Shape)
	}
	if y.Numel() != m*k*w.N || y.Cols() != w.N {
		return fmt.Errorf("cpu: MatMulExperts: y %v should be [%d, %d, %d] for ids %v and a weight with %d outputs", y.Shape, m, k, w.N, ids.Shape, w.N)
	}
	for i, e := range idv {
		if e < 0 || int(e) >= w.Experts {
			return fmt.Errorf("cpu: MatMulExperts: ids[%d, %d] = %d is not an expert of [0, %d)", i/max(k, 1), i%max(k, 1), e, w.Experts)
		}
	}
	xv, err := b.in(x, "MatMulExperts: x", slotX)
	if err != nil {
		return err
	}
	yv, err := b.out(y, "MatMulExperts: y", slotY)
	if err != nil {
		return err
	}
	if m*k == 0 {
		return nil
	}
	j := b.prepare(w, xv, yv)
	xrow := func(i int) int32 { // the x row of slot i = (token, slot)
		if perSlot {
			return int32(i)
		}
		return int32(i / k)
	}
	if m == 1 {
		// Decode: one segment per slot, each with its one row.
		for i, e := range idv {
			seg, err := b.expertSeg(w, int(e))
			if err != nil {
				return err
			}
			seg.p0, seg.p1 = i, i+1
			j.segs = append(j.segs, seg)
			j.pairs = append(j.pairs, mmPair{xrow(i), int32(i)})
		}
	} else {
		// Prefill: counting sort of the slots by expert.
		b.expCount = growInt32(b.expCount, w.Experts)
		clear(b.expCount)
		for _, e := range idv {
			b.expCount[e]++
		}
		b.expStart = growInt32(b.expStart, w.Experts+1)
		b.expUsed = b.expUsed[:0]
		start := int32(0)
		for e, c := range b.expCount {
			b.expStart[e] = start
			start += c
			if c > 0 {
				b.expUsed = append(b.expUsed, int32(e))
			}
		}
		b.expOrder = growInt32(b.expOrder, len(idv))
		for i, e := range idv {
			b.expOrder[b.expStart[e]] = int32(i)
			b.expStart[e]++
		}
		p := 0
		for _, e := range b.expUsed {
			seg, err := b.expertSeg(w, int(e))
			if err != nil {
				return err
			}
			seg.p0 = p
			for _, i := range b.expOrder[p : p+int(b.expCount[e])] {
				j.pairs = append(j.pairs, mmPair{xrow(int(i)), i})
			}
			p += int(b.expCount[e])
			seg.p1 = p
			j.segs = append(j.segs, seg)
		}
		maxPairs := 0
		for _, e := range b.expUsed {
			maxPairs = max(maxPairs, int(b.expCount[e]))
		}
		if j.fast == nil {
			b.growRows(w.K, maxPairs)
		}
	}
	if j.bits != 0 || j.fast != nil {
		if perSlot {
			b.sums(j, m*k)
		} else {
			b.sums(j, m)
		}
	}
	b.dispatch(j)
	b.flush(y, yv)
	return nil
}

// expertSeg returns the bytes of expert e of a 3D weight, checked to lie
// inside the buffers.
func (b *Backend) expertSeg(w *kernels.Weight, e int) (mmSeg, error) {
	var s mmSeg
	var err error
	if s.data, err = rawRange(w.Data, "MatMulExperts: weight data", w.Data.Offset+int64(e)*w.DataStride, w.Data.Bytes()); err != nil {
		return s, fmt.Errorf("%w (expert %d, DataStride %d)", err, e, w.DataStride)
	}
	if !w.Quantized() {
		return s, nil
	}
	off := int64(e) * w.GroupStride
	if s.scales, err = rawRange(w.Scales, "MatMulExperts: weight scales", w.Scales.Offset+off, w.Scales.Bytes()); err != nil {
		return s, fmt.Errorf("%w (expert %d, GroupStride %d)", err, e, w.GroupStride)
	}
	if s.biases, err = rawRange(w.Biases, "MatMulExperts: weight biases", w.Biases.Offset+off, w.Biases.Bytes()); err != nil {
		return s, fmt.Errorf("%w (expert %d, GroupStride %d)", err, e, w.GroupStride)
	}
	return s, nil
}

func growInt32(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n)
	}
	return s[:n]
}

// fastBlock is the most weight rows one SIMD kernel call covers: the
// block's scales and biases are converted to f32 once, and in prefill its
// weights stay in the cache while the input rows pass four at a time.
const fastBlock = 16

// fastInputs prepares the input rows for the SIMD kernels: rows of xw
// doubles, the values (permuted per block for 4-bit) followed, for quantized
// weights, by the per-group sums.
func (b *Backend) fastInputs(j *mmJob, rows int) {
	if j.int8 {
		b.quantInputs(j, rows)
		return
	}
	k := j.k
	if j.f32 { // f32 rows: 8-bit as given, 4-bit laid out by split4 (AVX-512) or permuted per block of 2·lanes
		src := j.xin[:rows*k]
		xw := k
		switch {
		case j.bits == 4 && b.ks.split4:
			xw = split4Len(k, j.group)
			b.xf32 = growAligned(b.xf32, rows*xw)
			for r := range rows {
				split4(b.xf32[r*xw:(r+1)*xw], src[r*k:(r+1)*k], j.group)
			}
			src = b.xf32[:rows*xw]
		case j.bits == 4:
			b.xf32 = grow(b.xf32, rows*k)
			for r := range rows {
				permute4(b.xf32[r*k:(r+1)*k], src[r*k:(r+1)*k], 2*j.lanes)
			}
			src = b.xf32[:rows*k]
		}
		j.xbase, j.xstride = unsafe.Pointer(&src[0]), 4*xw
		return
	}
	xw := (k + j.g + 7) &^ 7
	b.xf = grow64(b.xf, rows*xw)
	j.xf, j.xw = b.xf, xw
	for r := range rows {
		src, dst := j.xin[r*k:(r+1)*k], j.xf[r*xw:(r+1)*xw]
		if j.bits == 4 {
			permute4(dst[:k], src, j.lanes)
		} else {
			widen(dst[:k], src)
		}
		if j.bits != 0 {
			groupSums64(src, dst[k:k+j.g], j.group)
		}
	}
	j.xbase, j.xstride = unsafe.Pointer(&j.xf[0]), 8*xw
}

// rowsFast computes rows [r0, r1) of a segment for its input rows with the
// SIMD kernels, a block of weight rows at a time: four input rows per call
// while there are four, then one.
func (j *mmJob) rowsFast(seg *mmSeg, pairs []mmPair, r0, r1 int, ws *workerScratch) {
	a := &ws.ka
	k1, k4 := j.fast[0], j.fast[1]
	for row := r0; row < r1; row += fastBlock {
		nb := min(fastBlock, r1-row)
		a.w = unsafe.Pointer(&seg.data[row*j.rowBytes])
		a.stride, a.rows, a.k = j.rowBytes, nb, j.k
		if j.int8 {
			j.int8Groups(seg, row, nb, ws)
		} else if j.bits != 0 {
			j.fastGroups(seg, row, nb, ws)
		}
		pi := 0
		for ; pi+4 <= len(pairs); pi += 4 {
			j.point(a, pairs[pi:pi+4], row)
			k4(a)
		}
		if rem := len(pairs) - pi; rem >= 2 && j.mid != nil {
			j.point(a, pairs[pi:], row)
			j.mid[rem-2](a)
			pi += rem
		}
		for ; pi < len(pairs); pi++ {
			j.point(a, pairs[pi:pi+1], row)
			k1(a)
		}
	}
	*a = kargs{}
}

// point sets the kernel arguments' input and output rows to those of pairs
// (at most four), the outputs at column row.
func (j *mmJob) point(a *kargs, pairs []mmPair, row int) {
	for t, p := range pairs {
		a.x[t] = unsafe.Add(j.xbase, int(p.x)*j.xstride)
		a.y[t] = &j.y[int(p.y)*j.n+row]
	}
}

// fastGroups points the kernel arguments at the scales and biases of rows
// [row, row+nb): the weight's own when they are f32 or bf16 (the kernels
// read those), else converted to f32 into scratch.
func (j *mmJob) fastGroups(seg *mmSeg, row, nb int, ws *workerScratch) {
	a := &ws.ka
	g := j.g
	a.groups, a.bpg = g, j.group/j.lanes
	if j.f32 {
		a.bpg = j.group / j.b.ks.f32Step() // steps of f32Step values
		if j.bits == 4 && j.b.ks.split4 {
			a.bpg = j.group / 64 // halves of the kernels' steps
		}
	}
	j.groupRows(seg, row, nb, ws, false)
}

// groupRows sets a.sb and a.boff for rows [row, row+nb): zero copy for f32
// and bf16 scales unless scratch is asked for (f32 scratch, padded).
func (j *mmJob) groupRows(seg *mmSeg, row, nb int, ws *workerScratch, scratch bool) {
	a := &ws.ka
	g := j.g
	sc := seg.scales[row*j.gBytes : (row+nb)*j.gBytes]
	bi := seg.biases[row*j.gBytes : (row+nb)*j.gBytes]
	if !scratch && (j.sdt == dtype.BF16 || j.sdt == dtype.F32) {
		a.sb = unsafe.Pointer(&sc[0])
		a.boff = int(uintptr(unsafe.Pointer(&bi[0])) - uintptr(unsafe.Pointer(&sc[0])))
		return
	}
	sb := ws.sb32[:2*nb*g+8]
	switch j.sdt {
	case dtype.BF16:
		j.b.ks.widenBF16F32(&sb[0], &asU16(sc)[0], nb*g)
		j.b.ks.widenBF16F32(&sb[nb*g], &asU16(bi)[0], nb*g)
	case dtype.F32:
		copy(sb, asF32(sc))
		copy(sb[nb*g:], asF32(bi))
	default:
		groupParams(j.sdt, sc, sb[:nb*g], j.f16)
		groupParams(j.sdt, bi, sb[nb*g:2*nb*g], j.f16)
	}
	a.sb, a.boff = unsafe.Pointer(&sb[0]), nb*g*4
}
