package cpu

import (
	"os"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
)

//go:generate go run gen_amd64.go

// SIMD kernels. Each architecture file (simd_amd64.go, simd_arm64.go)
// offers kernel sets chosen at run time from the CPU's features; the generic
// Go kernels (dot.go) stay for everything else and are forced by
// GEMMOE_CPU_GENERIC=1 or WithGeneric.
//
// Most matmul kernels of a set are exact in float64 like the generic
// kernels (the f32-sum quantized kernels of the AVX2, AVX-512 and NEON sets,
// the default where they apply, are the exception: see matmulF32): a weight (a
// small unsigned integer q, a bf16 or an f32 value) times an f32 input is
// exact in float64, the kernels sum such products in
// float64 lanes, and the output is rounded to f32 once. Their results
// therefore equal the generic kernels' except, rarely, in the last bit when
// the two summation orders straddle a rounding boundary. (That matters: the
// tiny fixture models amplify rounding noise by ~10^4 from the first layer
// to the logits, and kernels that round partial sums to f32 move the fixture
// logits by a few 1e-3.) A quantized row is reduced per group, w·x = Σ_g
// scale·Σq·x + bias·Σx, as the generic kernels compute it; Σx per group is
// computed once per input row. Each kernel has a one-input-row form
// (decode) and a four-input-row form (prefill, one weight unpacking shared
// by four rows); both do the same operations in the same order for each
// input row, so a row's result does not depend on how many rows a call
// carries (batch invariance).

// kargs are the arguments of a matmul kernel: rows consecutive weight rows
// times one or four input rows. The assembly reads the fields at fixed
// offsets (TestKargsLayout).
type kargs struct {
	w      unsafe.Pointer    // first weight row
	stride int               // bytes between weight rows
	rows   int               // weight rows (>= 1)
	sb     unsafe.Pointer    // scales [rows][groups] (quantized; float64, int8 kernels f32)
	boff   int               // byte offset from the scales to the biases
	groups int               // groups per row (quantized)
	bpg    int               // blocks of lanes values per group (f32 sums: 4·lanes, AVX-512 4-bit 64; int8 kernels: units)
	k      int               // input width (dense); int8 kernels: 1 if a row ends in half a unit
	x      [4]unsafe.Pointer // input rows as the kernel reads them
	y      [4]*float32       // outputs of the first weight row (rows values each)
}

// kernelSet is one family of SIMD kernels.
type kernelSet struct {
	name  string
	lanes int // f32 lanes of a vector (float64 lanes: lanes/2); a block of the matmul kernels holds lanes values
	// Matmul kernels per weight format: [0] one input row, [1] four. The
	// quantized ones read f32 scales and biases, the "b" ones bf16.
	q4, q8, q4b, q8b, bf16, f32 [2]func(*kargs)
	// Quantized kernels that sum in f32 (nil: none; groups of a multiple
	// of f32Step()), f32 scales and biases, and ("b") bf16: the default
	// where present (see matmulF32).
	q4f, q8f, q4fb, q8fb [2]func(*kargs)
	// f32step: the values of a step of the f32-sum kernels, as many as
	// their partial sums per input row (0: 4·lanes).
	f32step int
	// split4: the 4-bit f32-sum kernels read their input rows as split4
	// lays them out (else as permute4 does, per block of 2·lanes).
	split4 bool
	// The 4-bit f32-sum kernels for two and three input rows (nil: none;
	// the rows left after the passes of four then go one at a time).
	q4fMid, q4fbMid [2]func(*kargs)
	// Int8-activation kernels (nil: none): 4-bit with groups of 64 or more,
	// 8-bit (f32 or bf16 scales), 4-bit with groups of 32 (f32 scales);
	// i8wide: the 8-bit ones read the input as int16.
	i4, i4b, i8, i8b, i4p [2]func(*kargs)
	i8wide                bool
	// Int24-activation kernels (nil: none), 4-bit: the int8 kernels'
	// integer products on inputs quantized to 24 bits (three int8 digits),
	// as exact as the f32-sum kernels (groups of 64 or more, f32 or bf16
	// scales; groups of 32, f32 scales).
	d4, d4b, d4p [2]func(*kargs)
	// int24: the int24 kernels are the default for 4-bit weights (where
	// they were measured faster than the f32-sum ones).
	int24        bool
	widenBF16F32 func(dst *float32, src *uint16, n int)
	quant        func(dst *byte, bsum *float64, x *float32, nblocks, mode int)
	// Attention: Σ a·b in float64 (exact products), and y += a·x.
	dot  func(a, b *float32, n int) float64
	axpy func(y *float64, x *float32, a float64, n int)
	// The same for four queries at once (nil: none): dot4 sets out[j] =
	// k·q_j for four float64 rows q_j n apart (n a multiple of 32), axpy4
	// adds p[j]·x to four rows y_j n apart (n a multiple of 16), each
	// query's bits those of dot and axpy.
	dot4  func(q *float64, k *float32, n int, out *float64)
	axpy4 func(y *float64, x *float32, p *float64, n int)
	// Softcap's rational tanh branch on n values (a multiple of lanes/2).
	softcap func(y, x *float32, c float64, n int)
	// geluMul computes y = gelu_tanh(a)·c on n values (a multiple of
	// lanes/2), within an f32 rounding of the exact value (nil: the
	// generic loop).
	geluMul func(y, a, c *float32, n int)
}

// chooseKernels returns the kernel set a backend uses: nil (generic) when
// forced (WithGeneric; GEMMOE_CPU_GENERIC=1 unless WithKernels names a set)
// or when the CPU has none, else the named set if given and available, else
// the best available.
func chooseKernels(generic bool, name string) *kernelSet {
	if generic {
		return nil
	}
	if name == "" { // an explicit WithKernels wins over the environment
		if os.Getenv("GEMMOE_CPU_GENERIC") == "1" {
			return nil
		}
		name = os.Getenv("GEMMOE_CPU_KERNELS")
	}
	sets := archKernels()
	if name == "generic" {
		return nil
	}
	for _, s := range sets {
		if name == "" || s.name == name {
			return s
		}
	}
	return nil
}

// defaultInt8 reports whether int8 activations are on by default
// (GEMMOE_CPU_INT8).
func defaultInt8() bool { return os.Getenv("GEMMOE_CPU_INT8") == "1" }

// defaultInt24 reports whether int24 activations are on unless an option
// says otherwise: GEMMOE_CPU_INT24=1 or 0, else the kernel set's default.
func defaultInt24(ks *kernelSet) bool {
	switch os.Getenv("GEMMOE_CPU_INT24") {
	case "1":
		return true
	case "0":
		return false
	}
	return ks != nil && ks.int24
}

// defaultFloat64Sums reports whether the quantized matmuls sum in float64 by
// default (GEMMOE_CPU_F64=1).
func defaultFloat64Sums() bool { return os.Getenv("GEMMOE_CPU_F64") == "1" }

// Float64Sums reports whether the backend's quantized SIMD matmuls sum in
// float64 (WithFloat64Sums) rather than in f32.
func (b *Backend) Float64Sums() bool { return b.f64 }

// Int8Activations reports whether the backend's quantized matmuls use int8
// activations (WithInt8Activations).
func (b *Backend) Int8Activations() bool { return b.int8 }

// Int24Activations reports whether the backend's 4-bit matmuls use int24
// activations where its kernel set has them (WithInt24Activations).
func (b *Backend) Int24Activations() bool { return b.int24 }

// KernelSets returns the names of the SIMD kernel sets this CPU supports,
// best first ("avx512", "avx2", "neon"); empty when only the generic Go
// kernels run here.
func KernelSets() []string {
	var n []string
	for _, s := range archKernels() {
		n = append(n, s.name)
	}
	return n
}

// Kernels returns the name of the kernel set the backend runs: "generic" or
// one of KernelSets.
func (b *Backend) Kernels() string {
	if b.ks == nil {
		return "generic"
	}
	return b.ks.name
}

// matmul returns the set's exact kernels for a weight format (dense dtype,
// or bits, group and scales dtype), or nil when it has none.
func (ks *kernelSet) matmul(bits, group int, wdt, sdt dtype.DType) *[2]func(*kargs) {
	if ks == nil {
		return nil
	}
	switch bits {
	case 0:
		switch wdt {
		case dtype.BF16:
			return &ks.bf16
		case dtype.F32:
			return &ks.f32
		}
	case 4, 8:
		if group%ks.lanes != 0 {
			return nil
		}
		b := sdt == dtype.BF16
		switch {
		case bits == 4 && b:
			return &ks.q4b
		case bits == 4:
			return &ks.q4
		case b:
			return &ks.q8b
		default:
			return &ks.q8
		}
	}
	return nil
}

// matmulF32 returns the set's f32-sum kernels for a quantized format, or
// nil. Most dequantize each weight to w = scale·q + bias in f32, as an f32
// dequantization does, and sum w·x in f32 lanes (AVX2, AVX-512: four
// accumulators a row; NEON: eight of four lanes, see quantF32 in
// gen_arm64.go): about half the work per weight of the float64 kernels;
// the AVX-512 4-bit ones (split4; groups of 64 or a multiple of 128) sum
// the exact q·x of a group in f32 and add scale·Σq·x and then bias·Σx per
// group (see quantF32Nib in gen_amd64.go). A result is within about
// (K/S + 10)·2⁻²⁴·Σ(|scale·q| + |bias|)·|x| of the exact dot product of the
// f32 weights, S = f32Step() being the partial sums per row (AVX2 and
// NEON 32, AVX-512 64; see quantF32Nib for the short rows of the AVX-512
// 4-bit kernels), and the same for a row whatever the batch. They read f32
// or bf16 scales and biases (others are converted to f32 per block of
// rows).
func (ks *kernelSet) matmulF32(bits, group int, sdt dtype.DType) *[2]func(*kargs) {
	if ks == nil || ks.q4f[0] == nil || group%ks.f32Step() != 0 {
		return nil
	}
	if bits == 4 && ks.split4 && group != 64 && group%128 != 0 {
		return nil // the kernels' steps span 128 values (see quantF32Nib)
	}
	b := sdt == dtype.BF16
	switch {
	case bits == 4 && b:
		return &ks.q4fb
	case bits == 4:
		return &ks.q4f
	case bits == 8 && b:
		return &ks.q8fb
	case bits == 8:
		return &ks.q8f
	}
	return nil
}

// matmulF32Mid returns the set's f32-sum kernels for two and three input
// rows where it has them for the format matmulF32 takes, else nil.
func (ks *kernelSet) matmulF32Mid(bits, group int, sdt dtype.DType) *[2]func(*kargs) {
	if bits != 4 || ks.matmulF32(bits, group, sdt) == nil || ks.q4fMid[0] == nil {
		return nil
	}
	if sdt == dtype.BF16 {
		return &ks.q4fbMid
	}
	return &ks.q4fMid
}

// f32Step returns the values a step of the set's f32-sum kernels takes:
// f32step, or 4·lanes where that is 0.
func (ks *kernelSet) f32Step() int {
	if ks.f32step != 0 {
		return ks.f32step
	}
	return 4 * ks.lanes
}

// int24Kernels returns the set's int24-activation kernels for a quantized
// format (4-bit, as int8Kernels), or nil.
func (ks *kernelSet) int24Kernels(bits, group int, sdt dtype.DType) *[2]func(*kargs) {
	if ks == nil || ks.d4[0] == nil || bits != 4 {
		return nil
	}
	switch {
	case group == 32:
		return &ks.d4p
	case sdt == dtype.BF16:
		return &ks.d4b
	}
	return &ks.d4
}

// int8Kernels returns the set's int8-activation kernels for a quantized
// format, or nil.
func (ks *kernelSet) int8Kernels(bits, group int, sdt dtype.DType) *[2]func(*kargs) {
	if ks == nil || ks.i4[0] == nil {
		return nil
	}
	b := sdt == dtype.BF16
	switch {
	case bits == 4 && group == 32:
		return &ks.i4p
	case bits == 4 && b:
		return &ks.i4b
	case bits == 4:
		return &ks.i4
	case bits == 8 && b:
		return &ks.i8b
	case bits == 8:
		return &ks.i8
	}
	return nil
}

// permute4 copies an input row for the 4-bit kernels (float64 lanes: the
// exact kernels; float32: the f32-sum ones): in each block of `block` values,
// the even-indexed ones (the low nibbles of the block's bytes), then the odd
// ones.
func permute4[T float32 | float64](dst []T, x []float32, block int) {
	h := block / 2
	for b := 0; b+block <= len(x); b += block {
		xs, ds := x[b:b+block:b+block], dst[b:b+block:b+block]
		for i := range h {
			ds[i] = T(xs[2*i])
			ds[h+i] = T(xs[2*i+1])
		}
	}
}

// groupSums64 sets xs[g] to the float64 sum of group g of x.
func groupSums64(x []float32, xs []float64, group int) {
	for g := range xs {
		var s0, s1 float64
		xx := x[g*group : (g+1)*group : (g+1)*group]
		for i := 0; i+2 <= len(xx); i += 2 {
			s0 += float64(xx[i])
			s1 += float64(xx[i+1])
		}
		xs[g] = s0 + s1
	}
}

// split4 lays out an input row x (a multiple of 64 values) for the AVX-512
// 4-bit f32-sum kernels (see quantF32Nib in gen_amd64.go): per step of 128
// values (64 bytes of weights, sixteen dwords of eight nibbles), eight
// vectors of 16, vector n holding x[8d+n]·2⁻⁴ⁿ in lane d (the scaling is
// exact unless the result is subnormal, and undone by the kernel's
// conversion of nibble n in place); a last step of 64 values has zeros in
// lanes 8..15. Then the f32 sums of the groups of x (rounded from float64
// sums), zero padded to a multiple of 16. dst holds split4Len values.
func split4(dst, x []float32, group int) {
	k := len(x)
	for b := 0; b < k; b += 128 {
		ds := dst[b : b+128 : b+128]
		m := min(k-b, 128) / 8 // dwords of weights: 16, or 8 at the end
		for d := range 16 {
			if d >= m {
				for n := range 8 {
					ds[16*n+d] = 0
				}
				continue
			}
			v := x[b+8*d : b+8*d+8 : b+8*d+8]
			ds[d] = v[0]
			ds[16+d] = v[1] * 0x1p-4
			ds[32+d] = v[2] * 0x1p-8
			ds[48+d] = v[3] * 0x1p-12
			ds[64+d] = v[4] * 0x1p-16
			ds[80+d] = v[5] * 0x1p-20
			ds[96+d] = v[6] * 0x1p-24
			ds[112+d] = v[7] * 0x1p-28
		}
	}
	sums := dst[(k+127)&^127:]
	for g := range sums {
		sums[g] = 0
		if (g+1)*group <= k {
			// Four float64 partial sums (a dependent chain of additions
			// would take longer than the layout above).
			var s0, s1, s2, s3 float64
			xx := x[g*group : (g+1)*group : (g+1)*group]
			for i := 0; i+4 <= len(xx); i += 4 {
				s0 += float64(xx[i])
				s1 += float64(xx[i+1])
				s2 += float64(xx[i+2])
				s3 += float64(xx[i+3])
			}
			sums[g] = float32((s0 + s1) + (s2 + s3))
		}
	}
}

// split4Len is the length of a row that split4 writes for k values in
// groups of group.
func split4Len(k, group int) int { return (k+127)&^127 + (k/group+15)&^15 }
