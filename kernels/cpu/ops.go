package cpu

import (
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Elementwise ops run serially below this many elements and on the pool
// above (parallelTanh for the ops that evaluate a tanh per element).
const (
	parallelElems = 1 << 15
	parallelTanh  = 1 << 11
)

type elemOp int

const (
	opAdd elemOp = iota
	opScale
	opSoftcap
	opGeluMul
)

// elemJob is an elementwise op over y[lo:hi].
type elemJob struct {
	op   elemOp
	y, a []float32
	c    []float32 // second operand
	s    float32
	ks   *kernelSet
	b    *Backend
}

// softcapSIMD computes y = float32(c·tanh(float64(a)/c)) like the generic
// loop, the same bits: the kernel evaluates math.Tanh's rational branch
// (|z| < 0.625) with the same operations, and the values outside it (and
// zeros, whose sign math.Tanh keeps) are redone with math.Tanh. a may be y.
func softcapSIMD(ks *kernelSet, y, a []float32, c float64, buf []float32) {
	step := ks.lanes / 2
	for lo := 0; lo < len(y); lo += len(buf) {
		hi := min(lo+len(buf), len(y))
		in := buf[:hi-lo]
		copy(in, a[lo:hi])
		out := y[lo:hi]
		if n := len(in) / step * step; n > 0 {
			ks.softcap(&out[0], &in[0], c, n)
		}
		for i, v := range in {
			z := float64(v) / c
			if i >= len(in)/step*step || !(math.Abs(z) < 0.625) || z == 0 {
				out[i] = float32(c * math.Tanh(z))
			}
		}
	}
}

func (j *elemJob) run(w, lo, hi int) {
	y, a := j.y[lo:hi], j.a[lo:hi]
	switch j.op {
	case opAdd:
		c := j.c[lo:hi]
		for i := range y {
			y[i] = a[i] + c[i]
		}
	case opScale:
		s := j.s
		for i := range y {
			y[i] = s * a[i]
		}
	case opSoftcap:
		cap64 := float64(j.s)
		if j.ks != nil {
			ws := &j.b.ws[w]
			ws.tmp = grow(ws.tmp, 1024)
			softcapSIMD(j.ks, y, a, cap64, ws.tmp)
			break
		}
		for i := range y {
			y[i] = float32(cap64 * math.Tanh(float64(a[i])/cap64))
		}
	case opGeluMul:
		c := j.c[lo:hi]
		done := 0
		if j.ks != nil && j.ks.geluMul != nil {
			step := j.ks.lanes / 2
			if done = len(y) / step * step; done > 0 {
				j.ks.geluMul(&y[0], &a[0], &c[0], done)
			}
		}
		for i := done; i < len(y); i++ {
			y[i] = geluTanh(a[i]) * c[i]
		}
	}
}

// geluTanh is 0.5x(1+tanh(sqrt(2/π)(x+0.044715x³))), evaluated in float64.
func geluTanh(x float32) float32 {
	v := float64(x)
	return float32(0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v))))
}

func (b *Backend) elementwise(op elemOp, y, a, c []float32, s float32) {
	j := &b.ew
	j.op, j.y, j.a, j.c, j.s, j.ks, j.b = op, y, a, c, s, b.ks, b
	n := len(y)
	limit := parallelElems
	if op == opGeluMul || op == opSoftcap {
		limit = parallelTanh // tanh costs ~10 ns an element (GeLU SIMD ~1.3; still faster split at 2048)
	}
	if n < limit {
		j.run(0, 0, n)
	} else {
		b.pool.parallel(n, b.pool.chunkFor(n, min(4096, limit/2)), j)
	}
	j.y, j.a, j.c = nil, nil, nil
}

// binary runs an elementwise op with two inputs of y's size.
func (b *Backend) binary(op elemOp, name string, y, a, c kernels.Tensor, s float32) error {
	if b.closed {
		return errClosed
	}
	n := y.Numel()
	if a.Numel() != n || (op != opScale && op != opSoftcap && c.Numel() != n) {
		if op == opScale || op == opSoftcap {
			return fmt.Errorf("cpu: %s: x %s and y %s differ in size", name, a, y)
		}
		return fmt.Errorf("cpu: %s: operands %s, %s and y %s differ in size", name, a, c, y)
	}
	// Constant argument names (a concatenation would allocate per call).
	nIn, nIn2, nY := "input", "second input", "y"
	switch op {
	case opAdd:
		nIn, nIn2, nY = "Add: input", "Add: second input", "Add: y"
	case opScale:
		nIn, nY = "Scale: input", "Scale: y"
	case opSoftcap:
		nIn, nY = "Softcap: input", "Softcap: y"
	case opGeluMul:
		nIn, nIn2, nY = "GeluTanhMul: input", "GeluTanhMul: second input", "GeluTanhMul: y"
	}
	av, err := b.in(a, nIn, slotA)
	if err != nil {
		return err
	}
	var cv []float32
	if op == opAdd || op == opGeluMul {
		if cv, err = b.in(c, nIn2, slotB); err != nil {
			return err
		}
	}
	yv, err := b.out(y, nY, slotY)
	if err != nil {
		return err
	}
	b.elementwise(op, yv, av, cv, s)
	b.flush(y, yv)
	return nil
}

// GeluTanhMul computes y = gelu_tanh(gate)·up elementwise.
func (b *Backend) GeluTanhMul(y, gate, up kernels.Tensor) error {
	return b.binary(opGeluMul, "GeluTanhMul", y, gate, up, 0)
}

// Add computes y = a + b elementwise (equal sizes; y may alias a or b).
func (b *Backend) Add(y, a, c kernels.Tensor) error { return b.binary(opAdd, "Add", y, a, c, 0) }

// Scale computes y = s·x elementwise.
func (b *Backend) Scale(y, x kernels.Tensor, s float32) error {
	return b.binary(opScale, "Scale", y, x, kernels.Tensor{}, s)
}

// Softcap computes y = c·tanh(x/c) elementwise; c must be positive.
func (b *Backend) Softcap(y, x kernels.Tensor, c float32) error {
	if !(c > 0) || math.IsInf(float64(c), 0) {
		return fmt.Errorf("cpu: Softcap: cap %v must be positive and finite", c)
	}
	return b.binary(opSoftcap, "Softcap", y, x, kernels.Tensor{}, c)
}

// Softmax normalizes each row of x over its last dimension (f32 in and out,
// exponentials and sums in float64).
func (b *Backend) Softmax(y, x kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	if y.Numel() != x.Numel() || y.Cols() != x.Cols() {
		return fmt.Errorf("cpu: Softmax: x %s and y %s differ in shape", x, y)
	}
	xv, err := b.in(x, "Softmax: x", slotX)
	if err != nil {
		return err
	}
	yv, err := b.out(y, "Softmax: y", slotY)
	if err != nil {
		return err
	}
	n := x.Cols()
	if n > 0 {
		for r := 0; r < len(xv)/n; r++ {
			softmaxRow(yv[r*n:(r+1)*n], xv[r*n:(r+1)*n])
		}
	}
	b.flush(y, yv)
	return nil
}

// softmaxRow writes softmax(x) to y (which may be x).
func softmaxRow(y, x []float32) {
	m := float32(math.Inf(-1))
	for _, v := range x {
		m = max(m, v)
	}
	var sum float64
	for i, v := range x {
		e := math.Exp(float64(v - m))
		sum += e
		y[i] = float32(e)
	}
	inv := 1 / sum
	for i := range y {
		y[i] = float32(float64(y[i]) * inv)
	}
}

// RMSNorm normalizes each row of x: y = x·(mean(x²)+eps)^-½·w, with the sum of
// squares in float64 and the rest in f32. w is a [N] float tensor or zero (no
// weight); y may be x.
func (b *Backend) RMSNorm(y, x, w kernels.Tensor, eps float32) error {
	if b.closed {
		return errClosed
	}
	n := x.Cols()
	if y.Numel() != x.Numel() || y.Cols() != n {
		return fmt.Errorf("cpu: RMSNorm: x %s and y %s differ in shape", x, y)
	}
	if eps < 0 || math.IsNaN(float64(eps)) {
		return fmt.Errorf("cpu: RMSNorm: eps %v must not be negative", eps)
	}
	var wv []float32
	if !w.IsZero() {
		if w.Numel() != n {
			return fmt.Errorf("cpu: RMSNorm: weight %s does not match rows of width %d", w, n)
		}
		var err error
		if wv, err = b.in(w, "RMSNorm: weight", slotW); err != nil {
			return err
		}
	}
	xv, err := b.in(x, "RMSNorm: x", slotX)
	if err != nil {
		return err
	}
	yv, err := b.out(y, "RMSNorm: y", slotY)
	if err != nil {
		return err
	}
	if n > 0 {
		for r := 0; r < len(xv)/n; r++ {
			xr, yr := xv[r*n:(r+1)*n], yv[r*n:(r+1)*n]
			var ss float64
			for _, v := range xr {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(float64(float32(ss/float64(n))+eps)))
			if wv == nil {
				for i, v := range xr {
					yr[i] = v * inv
				}
			} else {
				for i, v := range xr {
					yr[i] = (v * inv) * wv[i]
				}
			}
		}
	}
	b.flush(y, yv)
	return nil
}

// RoPE rotates x [T, heads, D] (or [T, heads·D]) in place by the NeoX
// half-rotation: pair (i, i+D/2) of row t turns by the angle
// float32(positions[t])·invFreq[i], computed in f32 like PyTorch, with cos and
// sin rounded to f32.
func (b *Backend) RoPE(x, positions, invFreq kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	pos, err := b.ints(positions, "RoPE: positions")
	if err != nil {
		return err
	}
	if invFreq.DType != dtype.F32 {
		return fmt.Errorf("cpu: RoPE: invFreq %s must be F32", invFreq)
	}
	fr, err := b.raw(invFreq, "RoPE: invFreq", false)
	if err != nil {
		return err
	}
	freq := asF32(fr)
	half := len(freq)
	d := 2 * half
	t := len(pos)
	if half == 0 {
		return fmt.Errorf("cpu: RoPE: invFreq %s is empty", invFreq)
	}
	if t == 0 || x.Numel()%(t*d) != 0 || x.Cols()%d != 0 || x.Numel() == 0 {
		return fmt.Errorf("cpu: RoPE: x %s is not [%d, heads, %d] for %d positions and %d frequencies", x, t, d, t, half)
	}
	heads := x.Numel() / (t * d)
	xv, err := b.in(x, "RoPE: x", slotX)
	if err != nil {
		return err
	}
	if _, err := b.raw(x, "RoPE: x", true); err != nil {
		return err
	}
	cs := grow(b.ws[0].sc, d) // scratch: cos then sin
	b.ws[0].sc = cs
	for ti, p := range pos {
		fp := float32(p)
		for i, f := range freq {
			a := float64(fp * f)
			cs[i] = float32(math.Cos(a))
			cs[half+i] = float32(math.Sin(a))
		}
		row := xv[ti*heads*d : (ti+1)*heads*d]
		for h := range heads {
			v := row[h*d : (h+1)*d]
			x1, x2 := v[:half], v[half:d]
			for i := range half {
				c, s := cs[i], cs[half+i]
				a, bb := x1[i], x2[i]
				x1[i] = float32(a*c) - float32(bb*s)
				x2[i] = float32(bb*c) + float32(a*s)
			}
		}
	}
	if x.DType != dtype.F32 {
		b.flush(x, xv)
	}
	return nil
}

// MoECombine computes y[M,N] = Σ_j weights[m,j]·x[m,j,:] for x [M,k,N] and
// weights [M,k], accumulating in slot order in f32.
func (b *Backend) MoECombine(y, x, weights kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	m, k := weights.Rows(), weights.Cols()
	n := y.Cols()
	if len(weights.Shape) == 0 || y.Rows() != m {
		return fmt.Errorf("cpu: MoECombine: weights %s should be [M, k] with y %s [M, N]", weights, y)
	}
	if x.Numel() != m*k*n || x.Cols() != n {
		return fmt.Errorf("cpu: MoECombine: x %s should be [%d, %d, %d] for weights %s and y %s", x, m, k, n, weights, y)
	}
	wv, err := b.in(weights, "MoECombine: weights", slotW)
	if err != nil {
		return err
	}
	xv, err := b.in(x, "MoECombine: x", slotX)
	if err != nil {
		return err
	}
	yv, err := b.out(y, "MoECombine: y", slotY)
	if err != nil {
		return err
	}
	for r := range m {
		yr := yv[r*n : (r+1)*n]
		clear(yr)
		for j := range k {
			c := wv[r*k+j]
			xr := xv[(r*k+j)*n : (r*k+j+1)*n]
			for i, v := range xr {
				yr[i] += c * v
			}
		}
	}
	b.flush(y, yv)
	return nil
}

// Embed gathers the rows ids [M] of table (a 2D weight [V, N], dense or
// quantized) into y [M, N], dequantized and multiplied by scale. An id outside
// [0, V) is an error.
func (b *Backend) Embed(y kernels.Tensor, table *kernels.Weight, ids kernels.Tensor, scale float32) error {
	if b.closed {
		return errClosed
	}
	data, scales, biases, err := b.checkWeight(table, "Embed")
	if err != nil {
		return err
	}
	if table.Experts != 0 {
		return fmt.Errorf("cpu: Embed: table has %d experts (want a 2D weight)", table.Experts)
	}
	idv, err := b.ints(ids, "Embed: ids")
	if err != nil {
		return err
	}
	v, n := table.N, table.K
	if y.Rows() != len(idv) || y.Cols() != n {
		return fmt.Errorf("cpu: Embed: y %s should be [%d, %d] for %d ids into a [%d, %d] table", y, len(idv), n, len(idv), v, n)
	}
	for i, id := range idv {
		if id < 0 || int(id) >= v {
			return fmt.Errorf("cpu: Embed: ids[%d] = %d is outside the table's %d rows", i, id, v)
		}
	}
	yv, err := b.out(y, "Embed: y", slotY)
	if err != nil {
		return err
	}
	var f16 *[1 << 16]float32
	if table.Data.DType == dtype.F16 || table.Scales.DType == dtype.F16 {
		f16 = f16Table()
	}
	ws := &b.ws[0]
	for i, id := range idv {
		row := int(id)
		yr := yv[i*n : (i+1)*n]
		if !table.Quantized() {
			sz := table.Data.DType.Size()
			raw := data[row*n*sz : (row+1)*n*sz]
			switch table.Data.DType {
			case dtype.BF16:
				bf16ToF32(yr, asU16(raw))
			case dtype.F16:
				for c, h := range asU16(raw) {
					yr[c] = f16[h]
				}
			default:
				copy(yr, asF32(raw))
			}
		} else {
			g := n / table.Group
			gb := g * table.Scales.DType.Size()
			rb := n * table.Bits / 8
			ws.sc, ws.bi = grow(ws.sc, g), grow(ws.bi, g)
			unpack(table.Bits, asU32(data[row*rb:(row+1)*rb]), yr)
			groupParams(table.Scales.DType, scales[row*gb:(row+1)*gb], ws.sc, f16)
			groupParams(table.Scales.DType, biases[row*gb:(row+1)*gb], ws.bi, f16)
			affine(yr, ws.sc, ws.bi, table.Group)
		}
		if scale != 1 {
			for c := range yr {
				yr[c] *= scale
			}
		}
	}
	b.flush(y, yv)
	return nil
}

// RouterTopK writes, for each row of logits [M,E], the top k experts of
// softmax(logits) (ties: lower index first) to ids [M,k] (I32) and their
// probabilities, renormalized to sum 1 and multiplied by perExpertScale[id]
// when that [E] tensor is given, to weights [M,k] (F32).
func (b *Backend) RouterTopK(weights, ids, logits, perExpertScale kernels.Tensor, k int) error {
	if b.closed {
		return errClosed
	}
	m, e := logits.Rows(), logits.Cols()
	if len(logits.Shape) == 0 || e == 0 {
		return fmt.Errorf("cpu: RouterTopK: logits %s must be [M, E]", logits)
	}
	if k < 1 || k > e {
		return fmt.Errorf("cpu: RouterTopK: k = %d must be in [1, %d]", k, e)
	}
	if weights.Rows() != m || weights.Cols() != k || weights.Numel() != m*k {
		return fmt.Errorf("cpu: RouterTopK: weights %s should be [%d, %d]", weights, m, k)
	}
	if ids.Rows() != m || ids.Cols() != k || ids.Numel() != m*k {
		return fmt.Errorf("cpu: RouterTopK: ids %s should be [%d, %d]", ids, m, k)
	}
	if ids.DType != dtype.I32 {
		return fmt.Errorf("cpu: RouterTopK: ids %s must be I32", ids)
	}
	idRaw, err := b.raw(ids, "RouterTopK: ids", true)
	if err != nil {
		return err
	}
	idv := asI32(idRaw)
	var scale []float32
	if !perExpertScale.IsZero() {
		if perExpertScale.Numel() != e {
			return fmt.Errorf("cpu: RouterTopK: perExpertScale %s should have %d entries", perExpertScale, e)
		}
		if scale, err = b.in(perExpertScale, "RouterTopK: perExpertScale", slotW); err != nil {
			return err
		}
	}
	lv, err := b.in(logits, "RouterTopK: logits", slotX)
	if err != nil {
		return err
	}
	wv, err := b.out(weights, "RouterTopK: weights", slotY)
	if err != nil {
		return err
	}
	ws := &b.ws[0]
	ws.score = grow(ws.score, e)
	p := ws.score
	for r := range m {
		softmaxRow(p, lv[r*e:(r+1)*e])
		wr, ir := wv[r*k:(r+1)*k], idv[r*k:(r+1)*k]
		var sum float32
		for j := range k {
			best := -1
			var bp float32
			for i, v := range p {
				if v < 0 || v != v { // taken, or NaN
					continue
				}
				if best < 0 || v > bp {
					best, bp = i, v
				}
			}
			if best < 0 { // only NaNs left: take the lowest untaken index
				for i, v := range p {
					if !(v < 0) {
						best, bp = i, v
						break
					}
				}
			}
			p[best] = -1
			ir[j], wr[j] = int32(best), bp
			sum += bp
		}
		for j := range k {
			wr[j] /= sum
			if scale != nil {
				wr[j] *= scale[ir[j]]
			}
		}
	}
	b.flush(weights, wv)
	return nil
}
