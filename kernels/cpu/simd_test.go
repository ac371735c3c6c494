package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// The SIMD kernels against the generic Go kernels on random data, for every
// kernel set this CPU has. Where the math is the same (the exact kernels:
// float64 sums of exact products, the generic fused path being the
// reference) the results must be identical except for rare last-bit
// differences where the two summation orders straddle an f32 rounding
// boundary; a row's results must not depend on how many rows a call carries.

func TestKargsLayout(t *testing.T) {
	var a kargs
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"w", unsafe.Offsetof(a.w), 0}, {"stride", unsafe.Offsetof(a.stride), 8}, {"rows", unsafe.Offsetof(a.rows), 16},
		{"sb", unsafe.Offsetof(a.sb), 24}, {"boff", unsafe.Offsetof(a.boff), 32}, {"groups", unsafe.Offsetof(a.groups), 40},
		{"bpg", unsafe.Offsetof(a.bpg), 48}, {"k", unsafe.Offsetof(a.k), 56}, {"x", unsafe.Offsetof(a.x), 64},
		{"y", unsafe.Offsetof(a.y), 96},
	} {
		if c.got != c.want {
			t.Errorf("kargs.%s at offset %d, the assembly reads it at %d", c.name, c.got, c.want)
		}
	}
}

// ulpDiff returns how many f32 steps apart a and b are.
func ulpDiff(a, b float32) int64 {
	ia, ib := int64(int32(math.Float32bits(a))), int64(int32(math.Float32bits(b)))
	if ia < 0 {
		ia = math.MinInt32 - ia
	}
	if ib < 0 {
		ib = math.MinInt32 - ib
	}
	d := ia - ib
	if d < 0 {
		d = -d
	}
	return d
}

// compareExact checks got against want (same math): every value within one
// f32 step, and at most 1% of them (and 2 at least) not identical.
func compareExact(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	diff := 0
	for i := range got {
		if got[i] == want[i] {
			continue
		}
		if d := ulpDiff(got[i], want[i]); d > 1 || math.IsNaN(float64(got[i])) {
			t.Fatalf("%s: element %d = %v, generic %v (%d steps apart)", what, i, got[i], want[i], d)
		}
		diff++
	}
	if diff > max(2, len(got)/100) {
		t.Fatalf("%s: %d of %d values differ in the last bit from the generic kernels", what, diff, len(got))
	}
}

// compareF32 checks got (the f32-sum kernels) against want (the generic
// float64 kernels): each within (K/32 + 10)·2⁻²⁴·mag[i] + one f32 step, mag
// being Σ|w|·|x| of the output (K/32: the additions per accumulator lane
// of the AVX2 and NEON kernels; AVX-512 has half as many).
func compareF32(t *testing.T, what string, got, want []float32, mag []float64, k int) {
	t.Helper()
	if len(got) != len(want) || len(mag) != len(got) {
		t.Fatalf("%s: %d values, want %d (%d bounds)", what, len(got), len(want), len(mag))
	}
	for i := range got {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		bound := float64(k/32+10)*0x1p-24*mag[i] + 0x1p-24*math.Abs(float64(want[i]))
		if !(d <= bound) {
			t.Fatalf("%s: element %d = %v, generic %v: |Δ| %.3g > bound %.3g", what, i, got[i], want[i], d, bound)
		}
	}
}

// absProducts returns Σ_k |w[r,k]|·|x[m,k]| for every input row m and weight
// row r ([M, N]).
func absProducts(absW []float64, x []float32, n, k int) []float64 {
	m := len(x) / k
	out := make([]float64, m*n)
	for i := range m {
		for r := range n {
			var s float64
			for j := range k {
				s += absW[r*k+j] * math.Abs(float64(x[i*k+j]))
			}
			out[i*n+r] = s
		}
	}
	return out
}

// f32Sums reports whether b runs the f32-sum kernels for format c.
func f32Sums(b *Backend, c simdCase) bool {
	return c.bits != 0 && !b.f64 && !b.int8 && b.ks.matmulF32(c.bits, c.group, c.sdt) != nil &&
		!(b.int24 && b.ks.int24Kernels(c.bits, c.group, c.sdt) != nil)
}

// simdCase is one weight format.
type simdCase struct {
	bits, group int
	wdt, sdt    dtype.DType
}

func (c simdCase) String() string {
	if c.bits == 0 {
		return c.wdt.String()
	}
	return fmt.Sprintf("q%d/g%d/%s", c.bits, c.group, c.sdt)
}

var simdCases = []simdCase{
	{4, 64, dtype.U32, dtype.BF16}, {4, 32, dtype.U32, dtype.F16}, {4, 128, dtype.U32, dtype.F32},
	{8, 64, dtype.U32, dtype.BF16}, {8, 32, dtype.U32, dtype.F32}, {8, 128, dtype.U32, dtype.F16},
	{0, 0, dtype.BF16, 0}, {0, 0, dtype.F32, 0},
	{3, 64, dtype.U32, dtype.BF16}, {0, 0, dtype.F16, 0}, // no SIMD kernels: the generic path either way
}

// simdShapes are (n, k) pairs: aligned, ragged (dense tails, odd row
// counts, a last block of rows shorter than fastBlock, blocks that end in
// one, two or three rows after the kernels' passes of four) and tiny.
func simdShapes(c simdCase) [][2]int {
	if c.bits == 0 {
		return [][2]int{{37, 256}, {33, 75}, {5, 13}, {1, 1}, {17, 2816}, {3, 31}}
	}
	g := c.group
	return [][2]int{{37, 4 * g}, {33, 3 * g}, {1, g}, {16, 2 * g}, {17, 2816 / g * g}, {5, 11 * g}, {7, 2 * g}, {22, 3 * g}}
}

// weightFor makes a random weight of format c and shape [n, k] on b and
// returns it with |w| per element.
func weightFor(t *testing.T, b *Backend, r *rand.Rand, c simdCase, n, k int) (*kernels.Weight, []float64) {
	if c.bits == 0 {
		w := rounded(c.wdt, randVals(r, n*k, -1, 1))
		abs := make([]float64, len(w))
		for i, v := range w {
			abs[i] = math.Abs(v)
		}
		return &kernels.Weight{Data: tensor(t, b, c.wdt, w, n, k), N: n, K: k}, abs
	}
	qm := randQMat(r, n, k, c.bits, c.group, c.sdt)
	return qm.upload(t, b, c.sdt), qm.absDense()
}

func TestSIMDMatMul(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	gen := newBackend(t, WithGeneric())
	r := rand.New(rand.NewPCG(21, 22))
	for _, ks := range sets {
		for _, f64 := range []bool{false, true} {
			b := newBackend(t, WithKernels(ks), WithFloat64Sums(f64), WithInt24Activations(false))
			if b.Kernels() != ks {
				t.Fatalf("WithKernels(%q) gave %q", ks, b.Kernels())
			}
			for _, c := range simdCases {
				for _, s := range simdShapes(c) {
					n, k := s[0], s[1]
					if f64 && (c.bits == 0 || b.ks.matmulF32(c.bits, c.group, c.sdt) == nil) {
						continue // the same kernels as without WithFloat64Sums
					}
					t.Run(fmt.Sprintf("%s/f64=%v/%s/%dx%d", ks, f64, c, n, k), func(t *testing.T) {
						w, absW := weightFor(t, b, r, c, n, k)
						const m = 9
						x := rounded(dtype.F32, randNorm(r, m*k))
						xt := tensor(t, b, dtype.F32, x, m, k)
						// Reference: the generic kernels one row at a time (the
						// fused exact path).
						want := make([]float32, 0, m*n)
						y1 := tensor(t, gen, dtype.F32, nil, 1, n)
						for row := range m {
							xr, _ := xt.RowRange(row, row+1)
							if err := gen.MatMul(y1, xr, w); err != nil {
								t.Fatal(err)
							}
							for _, v := range fetch(t, gen, y1) {
								want = append(want, float32(v))
							}
						}
						// SIMD, with M = 1..m rows per call: every call must give
						// the same bits for a row (batch invariance).
						var first []float32
						for _, mm := range []int{m, 1, 2, 3, 4, 5, 6, 7} {
							var got []float32
							for row := 0; row < m; row += mm {
								rows := min(mm, m-row)
								xr, _ := xt.RowRange(row, row+rows)
								yt := tensor(t, b, dtype.F32, nil, rows, n)
								if err := b.MatMul(yt, xr, w); err != nil {
									t.Fatal(err)
								}
								for _, v := range fetch(t, b, yt) {
									got = append(got, float32(v))
								}
							}
							if first == nil {
								first = got
								if f32Sums(b, c) {
									compareF32(t, "y", got, want, absProducts(absW, f32s(x), n, k), k)
								} else {
									compareExact(t, "y", got, want)
								}
								continue
							}
							for i := range got {
								if math.Float32bits(got[i]) != math.Float32bits(first[i]) {
									t.Fatalf("M=%d per call: element %d (row %d) = %v, with M=%d %v", mm, i, i/n, got[i], m, first[i])
								}
							}
						}
					})
				}
			}
		}
	}
}

func TestSIMDMatMulExperts(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	gen := newBackend(t, WithGeneric())
	r := rand.New(rand.NewPCG(23, 24))
	for _, ks := range sets {
		b := newBackend(t, WithKernels(ks), WithInt24Activations(false))
		for _, c := range []simdCase{{4, 64, dtype.BF16, dtype.BF16}, {8, 64, dtype.F32, dtype.F32}, {8, 32, dtype.F32, dtype.F32}, {0, 0, dtype.BF16, 0}} {
			const e, n, slots = 6, 21, 3
			k := 192
			w, _, absW := expertsCase(t, b, r, e, n, k, c.bits, c.group, c.wdt)
			for _, m := range []int{1, 7} {
				t.Run(fmt.Sprintf("%s/%s/M%d", ks, c, m), func(t *testing.T) {
					ids := make([]float64, m*slots)
					for i := range ids {
						ids[i] = float64(r.IntN(e))
					}
					x := rounded(dtype.F32, randNorm(r, m*k))
					xt := tensor(t, b, dtype.F32, x, m, k)
					it := tensor(t, b, dtype.I32, ids, m, slots)
					yt := tensor(t, b, dtype.F32, nil, m, slots, n)
					if err := b.MatMulExperts(yt, xt, w, it); err != nil {
						t.Fatal(err)
					}
					got := fetch(t, b, yt)
					// Reference: generic MatMul on Weight.Expert, row by row;
					// and the SIMD MatMulExperts with one token per call.
					for i := range m * slots {
						ex, _ := w.Expert(int(ids[i]))
						xr, _ := xt.RowRange(i/slots, i/slots+1)
						y1 := tensor(t, gen, dtype.F32, nil, 1, n)
						if err := gen.MatMul(y1, xr, &ex); err != nil {
							t.Fatal(err)
						}
						what := fmt.Sprintf("slot %d", i)
						if f32Sums(b, c) {
							mag := absProducts(absW[int(ids[i])], f32s(x[i/slots*k:(i/slots+1)*k]), n, k)
							compareF32(t, what, f32s(got[i*n:(i+1)*n]), f32s(fetch(t, gen, y1)), mag, k)
						} else {
							compareExact(t, what, f32s(got[i*n:(i+1)*n]), f32s(fetch(t, gen, y1)))
						}
					}
					for tok := range m {
						xr, _ := xt.RowRange(tok, tok+1)
						ir, _ := it.RowRange(tok, tok+1)
						y1 := tensor(t, b, dtype.F32, nil, 1, slots, n)
						if err := b.MatMulExperts(y1, xr, w, ir); err != nil {
							t.Fatal(err)
						}
						for i, v := range fetch(t, b, y1) {
							if v != got[tok*slots*n+i] {
								t.Fatalf("token %d alone: element %d = %v, in the batch %v", tok, i, v, got[tok*slots*n+i])
							}
						}
					}
				})
			}
		}
	}
}

func f32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

func TestKernelsOption(t *testing.T) {
	if b := newBackend(t, WithGeneric()); b.Kernels() != "generic" {
		t.Errorf("WithGeneric: kernels %q", b.Kernels())
	}
	t.Setenv("GEMMOE_CPU_GENERIC", "1")
	if b := newBackend(t); b.Kernels() != "generic" {
		t.Errorf("GEMMOE_CPU_GENERIC=1: kernels %q", b.Kernels())
	}
	t.Setenv("GEMMOE_CPU_GENERIC", "")
	want := "generic"
	if s := KernelSets(); len(s) > 0 {
		want = s[0]
	}
	if b := newBackend(t); b.Kernels() != want {
		t.Errorf("default kernels %q, want %q", b.Kernels(), want)
	}
}

// TestFloat64SumsOption checks the choice between the f32-sum and the
// float64 quantized kernels: f32 sums by default where the set has them,
// float64 with GEMMOE_CPU_F64=1 unless WithFloat64Sums says otherwise.
func TestFloat64SumsOption(t *testing.T) {
	c := simdCase{4, 64, dtype.U32, dtype.BF16}
	t.Setenv("GEMMOE_CPU_F64", "")
	t.Setenv("GEMMOE_CPU_INT24", "0")
	b := newBackend(t)
	if b.Float64Sums() {
		t.Errorf("default: Float64Sums")
	}
	if ks := b.ks; ks != nil && ks.q4f[0] != nil && !f32Sums(b, c) {
		t.Errorf("%s: the default backend does not run the f32-sum kernels for %s", ks.name, c)
	}
	if b := newBackend(t, WithFloat64Sums(true)); !b.Float64Sums() || f32Sums(b, c) {
		t.Errorf("WithFloat64Sums(true): Float64Sums %v, f32 sums %v", b.Float64Sums(), f32Sums(b, c))
	}
	t.Setenv("GEMMOE_CPU_F64", "1")
	if b := newBackend(t); !b.Float64Sums() || f32Sums(b, c) {
		t.Errorf("GEMMOE_CPU_F64=1: Float64Sums %v, f32 sums %v", b.Float64Sums(), f32Sums(b, c))
	}
	if b := newBackend(t, WithFloat64Sums(false)); b.Float64Sums() {
		t.Errorf("GEMMOE_CPU_F64=1 with WithFloat64Sums(false): Float64Sums")
	}
}

// TestInt24Option checks which backends run the int24 kernels for 4-bit
// weights: by default the sets that choose them (AVX2), with
// WithInt24Activations(true) or GEMMOE_CPU_INT24=1 every set that has them,
// never with int8 activations, float64 sums or the generic kernels.
func TestInt24Option(t *testing.T) {
	c := simdCase{4, 64, dtype.U32, dtype.BF16}
	runs := func(b *Backend) bool { return b.int24 && b.ks.int24Kernels(c.bits, c.group, c.sdt) != nil }
	t.Setenv("GEMMOE_CPU_INT24", "")
	t.Setenv("GEMMOE_CPU_INT8", "")
	t.Setenv("GEMMOE_CPU_F64", "")
	for _, ks := range KernelSets() {
		set := chooseKernels(false, ks)
		has := set.d4[0] != nil
		for _, tc := range []struct {
			name string
			env  string
			opts []Option
			want bool
		}{
			{"default", "", nil, has && set.int24},
			{"on", "", []Option{WithInt24Activations(true)}, has},
			{"off", "", []Option{WithInt24Activations(false)}, false},
			{"env on", "1", nil, has},
			{"env off", "0", nil, false},
			{"env off, option on", "0", []Option{WithInt24Activations(true)}, has},
			{"int8", "1", []Option{WithInt8Activations(true)}, false},
			{"f64", "1", []Option{WithFloat64Sums(true)}, false},
		} {
			t.Setenv("GEMMOE_CPU_INT24", tc.env)
			b := newBackend(t, append(tc.opts, WithKernels(ks))...)
			if got := runs(b); got != tc.want || b.Int24Activations() != tc.want {
				t.Errorf("%s, %s: int24 kernels %v, Int24Activations %v, want %v", ks, tc.name, got, b.Int24Activations(), tc.want)
			}
		}
	}
	t.Setenv("GEMMOE_CPU_INT24", "1")
	if b := newBackend(t, WithGeneric()); b.Int24Activations() {
		t.Error("generic kernels: Int24Activations")
	}
}

// TestSIMDAttention compares the attention of the SIMD kernel sets (float64
// dot products and accumulation over an F32 cache) with the generic kernel:
// the same math, so the same results but for rare last-bit differences of a
// score. Head dims cover the vector widths, ragged tails and tiny heads.
func TestSIMDAttention(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	gen := newBackend(t, WithGeneric())
	r := rand.New(rand.NewPCG(25, 26))
	for _, ks := range sets {
		b := newBackend(t, WithKernels(ks))
		for _, hd := range []int{256, 64, 40, 13, 3} {
			for _, window := range []int{0, 7} {
				t.Run(fmt.Sprintf("%s/hd%d/window%d", ks, hd, window), func(t *testing.T) {
					const heads, kvHeads, capacity, T = 4, 2, 40, 30
					p := kernels.AttentionParams{Heads: heads, KVHeads: kvHeads, HeadDim: hd, Window: window, Scale: 0.7}
					kw := kvHeads * hd
					kv := rounded(dtype.F32, randNorm(r, 2*capacity*kw))
					q := rounded(dtype.F32, randNorm(r, T*heads*hd))
					pos := make([]float64, T)
					for i := range pos {
						pos[i] = float64(i)
					}
					var outs [2][]float32
					for bi, be := range []*Backend{gen, b} {
						kc := tensor(t, be, dtype.F32, kv[:capacity*kw], capacity, kw)
						vc := tensor(t, be, dtype.F32, kv[capacity*kw:], capacity, kw)
						out := tensor(t, be, dtype.F32, nil, T, heads*hd)
						if err := be.Attention(out, tensor(t, be, dtype.F32, q, T, heads*hd), kc, vc, tensor(t, be, dtype.I32, pos, T), p); err != nil {
							t.Fatal(err)
						}
						outs[bi] = f32s(fetch(t, be, out))
					}
					compareExact(t, "out", outs[1], outs[0])
				})
			}
		}
	}
}

// TestSIMDSoftcap checks the SIMD softcap against the generic loop: the
// same bits, on values across math.Tanh's branches, zeros of both signs,
// infinities and NaN, in place and not, with ragged lengths.
func TestSIMDSoftcap(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	r := rand.New(rand.NewPCG(27, 28))
	for _, n := range []int{1, 3, 8, 17, 1024, 1029, 5000} {
		x := make([]float32, n)
		for i := range x {
			switch i % 9 {
			case 0:
				x[i] = float32(r.NormFloat64() * 40)
			case 1:
				x[i] = float32(r.NormFloat64())
			case 2:
				x[i] = float32(18.75 + r.Float64()*1e-3 - 5e-4) // the branch edge at c=30
			case 3:
				x[i] = float32(math.Copysign(0, float64(i%2)-0.5))
			default:
				x[i] = float32(r.NormFloat64() * 8)
			}
		}
		if n > 5 {
			x[1], x[2], x[3] = float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())
		}
		want := make([]float32, n)
		for i, v := range x {
			want[i] = float32(30 * math.Tanh(float64(v)/30))
		}
		for _, name := range sets {
			ks := chooseKernels(false, name)
			got := make([]float32, n)
			buf := make([]float32, 1024)
			softcapSIMD(ks, got, x, 30, buf)
			inPlace := append([]float32(nil), x...)
			softcapSIMD(ks, inPlace, inPlace, 30, buf)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(inPlace[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%s n=%d: softcap(%v) = %v (in place %v), generic %v", name, n, x[i], got[i], inPlace[i], want[i])
				}
			}
		}
	}
}

// geluExact is gelu_tanh(v) = ½v(1+tanh(u)) written as v·σ(2u), which has
// no cancellation where tanh(u) nears −1.
func geluExact(v float64) float64 {
	u := math.Sqrt(2/math.Pi) * (v + 0.044715*v*v*v)
	return v / (1 + math.Exp(-2*u))
}

// TestSIMDGeluMul checks the SIMD gelu_tanh(a)·c against the exact value:
// within one f32 rounding of float32(gelu)·c, on values across the range
// (both tails, the region where tanh nears −1, zeros), with non-finite
// inputs giving non-finite outputs, in place and not.
func TestSIMDGeluMul(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	r := rand.New(rand.NewPCG(29, 30))
	const n = 4096
	a, c := make([]float32, n), make([]float32, n)
	for i := range a {
		switch i % 6 {
		case 0:
			a[i] = float32(r.NormFloat64())
		case 1:
			a[i] = float32(r.NormFloat64() * 4)
		case 2:
			a[i] = float32(-r.Float64() * 40) // tanh(u) → −1: the result tiny
		case 3:
			a[i] = float32(r.Float64() * 1e4)
		case 4:
			a[i] = float32(math.Copysign(0, float64(i%4)-1.5))
		default:
			a[i] = float32(r.NormFloat64() * 1e-3)
		}
		c[i] = float32(r.NormFloat64())
		if i%5 == 0 {
			c[i] = 1
		}
	}
	a[7], a[13], a[19] = float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))
	for _, name := range sets {
		ks := chooseKernels(false, name)
		if ks.geluMul == nil {
			continue
		}
		got := make([]float32, n)
		ks.geluMul(&got[0], &a[0], &c[0], n)
		inPlace := append([]float32(nil), a...)
		ks.geluMul(&inPlace[0], &inPlace[0], &c[0], n)
		for i, v := range a {
			if math.Float32bits(got[i]) != math.Float32bits(inPlace[i]) && !(got[i] != got[i] && inPlace[i] != inPlace[i]) {
				t.Fatalf("%s: in place %v, not %v, for %v", name, inPlace[i], got[i], v)
			}
			x := float64(v)
			if math.IsNaN(x) || math.IsInf(x, 0) {
				if g := float64(got[i]); !math.IsNaN(g) && !math.IsInf(g, 0) {
					t.Fatalf("%s: gelu(%v)·%v = %v, want a non-finite value", name, v, c[i], got[i])
				}
				continue
			}
			want := float32(geluExact(x)) * c[i]
			if d := math.Abs(float64(got[i] - want)); d > ulp32(want) {
				t.Fatalf("%s: gelu(%v)·%v = %v, want %v (±%g)", name, v, c[i], got[i], want, ulp32(want))
			}
		}
	}
}

// ulp32 is the spacing of float32 values at x (the smallest denormal at 0).
func ulp32(x float32) float64 {
	ax := math.Abs(float64(x))
	return float64(math.Nextafter32(float32(ax), float32(math.Inf(1)))) - ax
}
