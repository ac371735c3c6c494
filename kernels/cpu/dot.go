package cpu

import "math"

// The hot loops of the matmuls: dot products of one weight row with an input
// row (dense rows in F32, BF16 or F16; quantized rows per bit width), row
// dequantization and the per-group combination of quantized partial sums.
// They are small, self-contained functions so that assembly versions can
// replace them later.
//
// The matmul kernels take the input row widened to float64 and accumulate in
// float64: in scalar code that costs no more than float32, and it makes the
// results nearly independent of the summation order (so the M=1 and M>1
// paths, and any future SIMD kernel, agree to the f32 rounding of the
// output), which is what a numeric reference wants. Outputs are rounded to
// f32.

// u8d maps a quantized value (at most 8 bits) to its float: a load is cheaper
// than an integer-to-float conversion in the unpacking loops.
var u8d = func() (t [256]float64) {
	for i := range t {
		t[i] = float64(i)
	}
	return t
}()

// u8f is u8d in float32, for unpacking.
var u8f = func() (t [256]float32) {
	for i := range t {
		t[i] = float32(i)
	}
	return t
}()

// dotF32 returns Σ a[i]·b[i] over len(a) elements (len(b) >= len(a)) in f32
// (attention scores).
func dotF32(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		aa := a[i : i+8 : i+8]
		bb := b[i : i+8 : i+8]
		s0 += aa[0]*bb[0] + aa[4]*bb[4]
		s1 += aa[1]*bb[1] + aa[5]*bb[5]
		s2 += aa[2]*bb[2] + aa[6]*bb[6]
		s3 += aa[3]*bb[3] + aa[7]*bb[7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot4 adds to acc[r] the dot product of x with columns [kc, kc+len(x)) of
// row r of an expanded block of 4 rows of width k (x is read once; four
// accumulators keep everything in registers).
func dot4(rows []float64, k, kc int, x, acc []float64) {
	n := len(x)
	w0, w1, w2, w3 := rows[kc:][:n], rows[k+kc:][:n], rows[2*k+kc:][:n], rows[3*k+kc:][:n]
	var a0, a1, a2, a3 float64
	for i, v := range x {
		a0 += w0[i] * v
		a1 += w1[i] * v
		a2 += w2[i] * v
		a3 += w3[i] * v
	}
	acc = acc[:4]
	acc[0] += a0
	acc[1] += a1
	acc[2] += a2
	acc[3] += a3
}

// dotRow returns Σ w[i]·x[i] for an expanded row.
func dotRow(w, x []float64) float64 {
	x = x[:len(w)]
	var s0, s1 float64
	i := 0
	for ; i+2 <= len(w); i += 2 {
		s0 += w[i] * x[i]
		s1 += w[i+1] * x[i+1]
	}
	if i < len(w) {
		s0 += w[i] * x[i]
	}
	return s0 + s1
}

// dotRowF32 returns Σ w[i]·x[i] for an f32 row w.
func dotRowF32(w []float32, x []float64) float64 {
	x = x[:len(w)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(w); i += 4 {
		ww := w[i : i+4 : i+4]
		xx := x[i : i+4 : i+4]
		s0 += float64(ww[0]) * xx[0]
		s1 += float64(ww[1]) * xx[1]
		s2 += float64(ww[2]) * xx[2]
		s3 += float64(ww[3]) * xx[3]
	}
	for ; i < len(w); i++ {
		s0 += float64(w[i]) * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dotRowBF16 returns Σ w[i]·x[i] for a bfloat16 row w.
func dotRowBF16(w []uint16, x []float64) float64 {
	x = x[:len(w)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(w); i += 4 {
		ww := w[i : i+4 : i+4]
		xx := x[i : i+4 : i+4]
		s0 += float64(math.Float32frombits(uint32(ww[0])<<16)) * xx[0]
		s1 += float64(math.Float32frombits(uint32(ww[1])<<16)) * xx[1]
		s2 += float64(math.Float32frombits(uint32(ww[2])<<16)) * xx[2]
		s3 += float64(math.Float32frombits(uint32(ww[3])<<16)) * xx[3]
	}
	for ; i < len(w); i++ {
		s0 += float64(math.Float32frombits(uint32(w[i])<<16)) * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dotRowF16 returns Σ w[i]·x[i] for an IEEE half row w, tab being f16Table().
func dotRowF16(w []uint16, x []float64, tab *[1 << 16]float32) float64 {
	x = x[:len(w)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(w); i += 4 {
		ww := w[i : i+4 : i+4]
		xx := x[i : i+4 : i+4]
		s0 += float64(tab[ww[0]]) * xx[0]
		s1 += float64(tab[ww[1]]) * xx[1]
		s2 += float64(tab[ww[2]]) * xx[2]
		s3 += float64(tab[ww[3]]) * xx[3]
	}
	for ; i < len(w); i++ {
		s0 += float64(tab[w[i]]) * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// qdot4 sets gsum[g] = Σ q[i]·x[i] over group g of a 4-bit row (8 values per
// word, value j of a word in bits [4j, 4j+4)). Two words per iteration (a
// group has at least four).
func qdot4(w []uint32, x []float64, gsum []float64, group int) {
	wpg := group / 8
	for g := range gsum {
		ws := w[g*wpg : (g+1)*wpg : (g+1)*wpg]
		xs := x[g*group : (g+1)*group : (g+1)*group]
		var s0, s1, s2, s3 float64
		for j := 0; j+2 <= len(ws); j += 2 {
			v, u := ws[j], ws[j+1]
			xx := xs[j*8 : j*8+16 : j*8+16]
			s0 += u8d[v&15]*xx[0] + u8d[u&15]*xx[8]
			s1 += u8d[v>>4&15]*xx[1] + u8d[u>>4&15]*xx[9]
			s2 += u8d[v>>8&15]*xx[2] + u8d[u>>8&15]*xx[10]
			s3 += u8d[v>>12&15]*xx[3] + u8d[u>>12&15]*xx[11]
			s0 += u8d[v>>16&15]*xx[4] + u8d[u>>16&15]*xx[12]
			s1 += u8d[v>>20&15]*xx[5] + u8d[u>>20&15]*xx[13]
			s2 += u8d[v>>24&15]*xx[6] + u8d[u>>24&15]*xx[14]
			s3 += u8d[v>>28]*xx[7] + u8d[u>>28]*xx[15]
		}
		gsum[g] = (s0 + s1) + (s2 + s3)
	}
}

// qdot8 is qdot4 for 8-bit rows (4 values per word).
func qdot8(w []uint32, x []float64, gsum []float64, group int) {
	wpg := group / 4
	for g := range gsum {
		ws := w[g*wpg : (g+1)*wpg : (g+1)*wpg]
		xs := x[g*group : (g+1)*group : (g+1)*group]
		var s0, s1, s2, s3 float64
		for j := 0; j+2 <= len(ws); j += 2 {
			v, u := ws[j], ws[j+1]
			xx := xs[j*4 : j*4+8 : j*4+8]
			s0 += u8d[v&255]*xx[0] + u8d[u&255]*xx[4]
			s1 += u8d[v>>8&255]*xx[1] + u8d[u>>8&255]*xx[5]
			s2 += u8d[v>>16&255]*xx[2] + u8d[u>>16&255]*xx[6]
			s3 += u8d[v>>24]*xx[3] + u8d[u>>24]*xx[7]
		}
		gsum[g] = (s0 + s1) + (s2 + s3)
	}
}

// qdot2 is qdot4 for 2-bit rows (16 values per word).
func qdot2(w []uint32, x []float64, gsum []float64, group int) {
	wpg := group / 16
	for g := range gsum {
		ws := w[g*wpg : (g+1)*wpg : (g+1)*wpg]
		xs := x[g*group : (g+1)*group : (g+1)*group]
		var s0, s1, s2, s3 float64
		for j, v := range ws {
			xx := xs[j*16 : j*16+16 : j*16+16]
			s0 += u8d[v&3]*xx[0] + u8d[v>>8&3]*xx[4] + u8d[v>>16&3]*xx[8] + u8d[v>>24&3]*xx[12]
			s1 += u8d[v>>2&3]*xx[1] + u8d[v>>10&3]*xx[5] + u8d[v>>18&3]*xx[9] + u8d[v>>26&3]*xx[13]
			s2 += u8d[v>>4&3]*xx[2] + u8d[v>>12&3]*xx[6] + u8d[v>>20&3]*xx[10] + u8d[v>>28&3]*xx[14]
			s3 += u8d[v>>6&3]*xx[3] + u8d[v>>14&3]*xx[7] + u8d[v>>22&3]*xx[11] + u8d[v>>30]*xx[15]
		}
		gsum[g] = (s0 + s1) + (s2 + s3)
	}
}

// qdotN is qdot4 for any width (used for 3, 5 and 6 bits, whose values
// straddle words): the row is read as a little-endian bit stream through a
// 64-bit window. A group always ends on a word boundary (group·bits is a
// multiple of 32).
func qdotN(w []uint32, x []float64, gsum []float64, group, bits int) {
	mask := uint64(1)<<bits - 1
	nbits := uint(bits)
	wi := 0
	for g := range gsum {
		xs := x[g*group : (g+1)*group : (g+1)*group]
		var buf uint64
		var have uint
		var s0, s1 float64
		for i := 0; i+2 <= len(xs); i += 2 {
			if have < 2*nbits {
				buf |= uint64(w[wi]) << have
				wi++
				have += 32
			}
			s0 += u8d[buf&mask] * xs[i]
			s1 += u8d[buf>>nbits&mask] * xs[i+1]
			buf >>= 2 * nbits
			have -= 2 * nbits
		}
		gsum[g] = s0 + s1
	}
}

// qdot dispatches to the kernel for bits.
func qdot(bits int, w []uint32, x []float64, gsum []float64, group int) {
	switch bits {
	case 4:
		qdot4(w, x, gsum, group)
	case 8:
		qdot8(w, x, gsum, group)
	case 2:
		qdot2(w, x, gsum, group)
	default:
		qdotN(w, x, gsum, group, bits)
	}
}

// unpack writes the quantized values of a packed row as floats: q[i] for i <
// len(q). len(q)·bits must be a multiple of 32.
func unpack(bits int, w []uint32, q []float32) {
	switch bits {
	case 4:
		for j := 0; j < len(q)/8; j++ {
			v := w[j]
			qq := q[j*8 : j*8+8 : j*8+8]
			qq[0], qq[1], qq[2], qq[3] = u8f[v&15], u8f[v>>4&15], u8f[v>>8&15], u8f[v>>12&15]
			qq[4], qq[5], qq[6], qq[7] = u8f[v>>16&15], u8f[v>>20&15], u8f[v>>24&15], u8f[v>>28]
		}
	case 8:
		for j := 0; j < len(q)/4; j++ {
			v := w[j]
			qq := q[j*4 : j*4+4 : j*4+4]
			qq[0], qq[1], qq[2], qq[3] = u8f[v&255], u8f[v>>8&255], u8f[v>>16&255], u8f[v>>24]
		}
	default:
		mask := uint64(1)<<bits - 1
		var buf uint64
		var have uint
		wi := 0
		for i := range q {
			if have < uint(bits) {
				buf |= uint64(w[wi]) << have
				wi++
				have += 32
			}
			q[i] = u8f[buf&mask]
			buf >>= uint(bits)
			have -= uint(bits)
		}
	}
}

// affine sets q[i] = scale[g]·q[i] + bias[g] for the groups of a row.
func affine(q []float32, scale, bias []float32, group int) {
	for g := range scale {
		s, b := scale[g], bias[g]
		qq := q[g*group : (g+1)*group : (g+1)*group]
		for i, v := range qq {
			qq[i] = s*v + b
		}
	}
}

// groupSums sets xs[g] = Σ x[i] over group g (xs has len(x)/group entries).
func groupSums(x []float64, xs []float64, group int) {
	for g := range xs {
		var s0, s1 float64
		xx := x[g*group : (g+1)*group : (g+1)*group]
		for i := 0; i+2 <= len(xx); i += 2 {
			s0 += xx[i]
			s1 += xx[i+1]
		}
		xs[g] = s0 + s1
	}
}

// widen sets dst[i] = float64(src[i]).
func widen(dst []float64, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = float64(v)
	}
}

// combineBF16 returns Σ_g scale[g]·gsum[g] + bias[g]·xsum[g] with bf16 scales
// and biases: the quantized dot w·x = Σ_g scale·Σq·x + bias·Σx.
func combineBF16(gsum, xsum []float64, scale, bias []uint16) float64 {
	scale, bias, xsum = scale[:len(gsum)], bias[:len(gsum)], xsum[:len(gsum)]
	var s float64
	for g, q := range gsum {
		s += float64(math.Float32frombits(uint32(scale[g])<<16))*q + float64(math.Float32frombits(uint32(bias[g])<<16))*xsum[g]
	}
	return s
}

// combineF32 is combineBF16 for f32 scales and biases.
func combineF32(gsum, xsum []float64, scale, bias []float32) float64 {
	scale, bias, xsum = scale[:len(gsum)], bias[:len(gsum)], xsum[:len(gsum)]
	var s float64
	for g, q := range gsum {
		s += float64(scale[g])*q + float64(bias[g])*xsum[g]
	}
	return s
}

// combineF16 is combineBF16 for f16 scales and biases.
func combineF16(gsum, xsum []float64, scale, bias []uint16, tab *[1 << 16]float32) float64 {
	scale, bias, xsum = scale[:len(gsum)], bias[:len(gsum)], xsum[:len(gsum)]
	var s float64
	for g, q := range gsum {
		s += float64(tab[scale[g]])*q + float64(tab[bias[g]])*xsum[g]
	}
	return s
}
