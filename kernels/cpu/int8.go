package cpu

import (
	"math"
	"unsafe"
)

// The int8-activation path (WithInt8Activations): each input row is
// quantized per block of 32 values to int8 with an f32 scale d = max|x|/127,
// and a weight row's product is Σ_g scale_g·Σ_b d_b·Σ q·xi + bias_g·Σx, the
// integer sums exact (VPDPBUSD, or VPMADDUBSW/VPMADDWD), the rest in f32.
// Σx per group is the exact sum of the f32 inputs (not of the quantized
// ones), so the bias term carries no quantization error. The kernels'
// layouts are described in gen_amd64.go (int8q).

const qblock = 32 // values per int8 scale

// The int24-activation path (WithInt24Activations, 4-bit weights): the same
// kernels' integer products on inputs quantized per block of 32 to 24-bit
// integers v with d = max|x|/(127·2¹⁶), held as three int8 digits (v =
// 2¹⁶·h + 2⁸·m + l) that the kernels multiply in turn, shifting the int32
// sums by 8 bits between digits. The inputs are rounded to within 1.75·d
// (about 2⁻²² of the block's largest value; TestQuantDigits), the order of
// the f32 kernels' own rounding, so the results are about as close to the
// exact sums as theirs; the integer work per weight is three times the int8
// path's, still a third less than the f32 kernels' conversions and FMAs.

// int8Units returns the units of a row of k values and the input bytes per
// unit for a kernel set (4-bit units hold 64 values, 8-bit units 32; int24
// 4-bit units three times the digits).
func int8Units(k, bits int, wide, int24 bool) (units, unitBytes int) {
	if bits == 4 && int24 {
		return (k + 63) / 64, 224
	}
	if bits == 4 {
		return (k + 63) / 64, 96
	}
	if wide {
		return k / 32, 96
	}
	return k / 32, 64
}

// quantInputs quantizes the input rows for the int8 kernels into b.xq.
func (b *Backend) quantInputs(j *mmJob, rows int) {
	k := j.k
	units, ub := int8Units(k, j.bits, b.ks.i8wide, j.int24)
	stride := (units*ub + 4*j.g + 63) &^ 63
	words := rows * stride / 8
	if cap(b.xq) < words {
		b.xq = make([]uint64, words)
	}
	b.xq = b.xq[:words]
	nb := k / qblock
	b.bsum = grow64(b.bsum, nb)
	mode := 0
	switch {
	case j.int24:
		mode = 3
	case j.bits == 4:
		mode = 1
	case b.ks.i8wide:
		mode = 2
	}
	all := unsafe.Slice((*byte)(unsafe.Pointer(&b.xq[0])), rows*stride)
	for r := range rows {
		src, dst := j.xin[r*k:(r+1)*k], all[r*stride:(r+1)*stride]
		if j.bits == 4 && nb%2 == 1 {
			clear(dst[(units-1)*ub : units*ub]) // the half unit at the end
		}
		b.ks.quant(&dst[0], &b.bsum[0], &src[0], nb, mode)
		xs := asF32(dst[units*ub : units*ub+4*j.g])
		bpg := j.group / qblock
		for g := range xs {
			var s float64
			for _, v := range b.bsum[g*bpg : (g+1)*bpg] {
				s += v
			}
			xs[g] = float32(s)
		}
	}
	j.xbase, j.xstride = unsafe.Pointer(&all[0]), stride
}

// blockScale returns the scale d = max|x|/top of a block of 32 values and
// its inverse top/max|x| (both f32), ok false when the block holds only
// zeros (d 0) or a NaN or Inf (d NaN: the outputs become NaN).
func blockScale(x []float32, top float32) (d, inv float32, ok bool) {
	var amax float32
	for _, v := range x[:qblock] {
		amax = max(amax, abs32(v))
	}
	if amax == 0 {
		return 0, 0, false
	}
	if amax != amax || amax > math.MaxFloat32 {
		return float32(math.NaN()), 0, false
	}
	return amax / top, top / amax, true
}

// quantBlock quantizes 32 values to int8: q = round(x/d), d = max|x|/127.
func quantBlock(x []float32, q *[qblock]int8) float32 {
	*q = [qblock]int8{}
	d, id, ok := blockScale(x, 127)
	if ok {
		for i, v := range x[:qblock] {
			q[i] = int8(math.RoundToEven(float64(v * id)))
		}
	}
	return d
}

// quantDigits quantizes 32 values to 24-bit integers v = round(x/d), d =
// max|x|/(127·2¹⁶) (v = x·(127·2¹⁶/max|x|) in f32, rounded to nearest even),
// and splits them into digits, v = 2¹⁶·h + 2⁸·m + l with m and l in
// [-128, 127] (so |h| <= 127). Blocks of zeros, NaN or Inf are as quantBlock's.
func quantDigits(x []float32, h, m, l *[qblock]int8) float32 {
	*h, *m, *l = [qblock]int8{}, [qblock]int8{}, [qblock]int8{}
	d, id, ok := blockScale(x, 127<<16)
	if ok {
		for i, v := range x[:qblock] {
			q := int32(math.RoundToEven(float64(v * id)))
			l[i] = int8(q)
			q = (q + 128) >> 8
			m[i] = int8(q)
			h[i] = int8((q + 128) >> 8)
		}
	}
	return d
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

// int8Groups points the kernel arguments at f32 scales and biases of rows
// [row, row+nb) in scratch, and sets the unit counts.
func (j *mmJob) int8Groups(seg *mmSeg, row, nb int, ws *workerScratch) {
	a := &ws.ka
	g := j.g
	a.groups = g
	a.k = 0
	switch {
	case j.bits == 4 && j.group == 32:
		a.k = g % 2
	case j.bits == 4:
		a.bpg = j.group / 64
	default:
		a.bpg = j.group / 32
	}
	j.groupRows(seg, row, nb, ws, j.bits == 4 && j.group == 32)
}
