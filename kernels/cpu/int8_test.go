package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
)

// intBound returns, per output, the bound on |integer result - exact
// result| for inputs quantized per block to d_b = max|x|/top: the worst-case
// rounding of each input to its block's grid, Σ_i |scale·q_i|·d_b·round
// (round: 0.5; for int24 1.75, see TestQuantDigits), plus f32 accumulation
// (2e-6 of Σ|w||x|).
func intBound(x []float64, qm *qmat, m int, top, round float64) []float64 {
	n, k := qm.n, qm.k
	out := make([]float64, m*n)
	wpr, gpr := k*qm.bits/32, k/qm.group
	for r := range m {
		xr := x[r*k : (r+1)*k]
		d := make([]float64, k/qblock)
		for b := range d {
			for _, v := range xr[b*qblock : (b+1)*qblock] {
				d[b] = max(d[b], math.Abs(float64(float32(v))))
			}
			d[b] /= top
		}
		for c := range n {
			row := qm.words[c*wpr : (c+1)*wpr]
			var s, mag float64
			for i := range k {
				sc := qm.scales[c*gpr+i/qm.group]
				q := float64(refQ(row, qm.bits, i))
				s += math.Abs(sc*q) * d[i/qblock] * round
				mag += (math.Abs(sc*q) + math.Abs(qm.biases[c*gpr+i/qm.group])) * math.Abs(xr[i])
			}
			out[r*n+c] = s*1.0001 + 2e-6*mag
		}
	}
	return out
}

// TestIntMatMul checks the integer kernels (int8 activations, and int24
// for 4-bit weights) against the exact products within the rounding of
// their inputs, and that a row's result does not depend on the rows a call
// carries.
func TestIntMatMul(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	r := rand.New(rand.NewPCG(31, 32))
	type path struct {
		name       string
		opts       []Option
		top, round float64
	}
	for _, ks := range sets {
		for _, p := range []path{
			{"int8", []Option{WithInt8Activations(true)}, 127, 0.5 * 1.0001},
			{"int24", []Option{WithInt24Activations(true)}, 127 << 16, 1.75},
		} {
			b := newBackend(t, append(p.opts, WithKernels(ks))...)
			if p.name == "int24" && b.ks.d4[0] == nil {
				continue // no int24 kernels in this set (TestInt24Option)
			}
			if (p.name == "int8") != b.Int8Activations() || (p.name == "int24") != b.Int24Activations() {
				t.Fatalf("%s: Int8Activations %v, Int24Activations %v", p.name, b.Int8Activations(), b.Int24Activations())
			}
			for _, c := range simdCases {
				if b.ks.int8Kernels(c.bits, c.group, c.sdt) == nil || p.name == "int24" && b.ks.int24Kernels(c.bits, c.group, c.sdt) == nil {
					continue
				}
				for _, s := range simdShapes(c) {
					n, k := s[0], s[1]
					t.Run(fmt.Sprintf("%s/%s/%s/%dx%d", ks, p.name, c, n, k), func(t *testing.T) {
						qm := randQMat(r, n, k, c.bits, c.group, c.sdt)
						w := qm.upload(t, b, c.sdt)
						const m = 9
						x := rounded(dtype.F32, randNorm(r, m*k))
						xt := tensor(t, b, dtype.F32, x, m, k)
						want, _ := refMatMul(x, qm.dense(), qm.absDense(), m, n, k)
						bound := intBound(x, qm, m, p.top, p.round)
						var first []float64
						for _, mm := range []int{m, 1, 4, 5} {
							var got []float64
							for row := 0; row < m; row += mm {
								rows := min(mm, m-row)
								xr, _ := xt.RowRange(row, row+rows)
								yt := tensor(t, b, dtype.F32, nil, rows, n)
								if err := b.MatMul(yt, xr, w); err != nil {
									t.Fatal(err)
								}
								got = append(got, fetch(t, b, yt)...)
							}
							if first == nil {
								first = got
								for i := range got {
									if !(math.Abs(got[i]-want[i]) <= bound[i]) {
										t.Fatalf("element %d (row %d) = %v, exact %v: |Δ| %.3g > bound %.3g", i, i/n, got[i], want[i], math.Abs(got[i]-want[i]), bound[i])
									}
								}
								continue
							}
							for i := range got {
								if got[i] != first[i] {
									t.Fatalf("M=%d per call: element %d = %v, with M=%d %v", mm, i, got[i], m, first[i])
								}
							}
						}
					})
				}
			}
		}
	}
}

// TestQuantInt8 checks the assembly quantizer against quantBlock.
func TestQuantInt8(t *testing.T) {
	ks := chooseKernels(false, "")
	if ks == nil {
		t.Skip("no SIMD kernels")
	}
	r := rand.New(rand.NewPCG(41, 42))
	const nb = 6
	x := make([]float32, nb*qblock)
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Pow(10, float64(i/qblock-2)))
	}
	for i := 64; i < 96; i++ {
		x[i] = 0 // an all-zero block
	}
	x[100] = 1e-30
	for mode := range 3 {
		size := map[int]int{0: 64, 1: 96, 2: 96}[mode]
		units := nb
		if mode == 1 {
			units = nb / 2
		}
		dst := make([]byte, units*size)
		bsum := make([]float64, nb)
		ks.quant(&dst[0], &bsum[0], &x[0], nb, mode)
		for b := range nb {
			var q [qblock]int8
			d := quantBlock(x[b*qblock:(b+1)*qblock], &q)
			var s float64
			for _, v := range x[b*qblock : (b+1)*qblock] {
				s += float64(v)
			}
			if math.Abs(bsum[b]-s) > 1e-12*math.Abs(s)+1e-300 {
				t.Errorf("mode %d block %d: sum %v, want %v", mode, b, bsum[b], s)
			}
			for i := range qblock {
				var got int8
				var gd float32
				switch mode {
				case 0:
					got, gd = int8(dst[b*64+i]), asF32(dst[b*64+32:])[i%8]
				case 1:
					u, h := dst[(b/2)*96:], 16*(b%2)
					if i%2 == 0 {
						got = int8(u[h+i/2])
					} else {
						got = int8(u[32+h+i/2])
					}
					gd = asF32(u[64+h:])[i%4]
				case 2:
					got = int8(int16(uint16(dst[b*96+2*i]) | uint16(dst[b*96+2*i+1])<<8))
					gd = asF32(dst[b*96+64:])[i%8]
				}
				if got != q[i] || gd != d {
					t.Fatalf("mode %d block %d value %d: q %d d %v, want %d %v", mode, b, i, got, gd, q[i], d)
				}
			}
		}
	}
	// Mode 3: the int24 digits, against quantDigits.
	dst := make([]byte, nb/2*224)
	bsum := make([]float64, nb)
	ks.quant(&dst[0], &bsum[0], &x[0], nb, 3)
	for b := range nb {
		var h, m, l [qblock]int8
		d := quantDigits(x[b*qblock:(b+1)*qblock], &h, &m, &l)
		u, half := dst[(b/2)*224:], 16*(b%2)
		for i := range qblock {
			off := half + i/2
			if i%2 == 1 {
				off += 32
			}
			got := [3]int8{int8(u[off]), int8(u[64+off]), int8(u[128+off])}
			if got != [3]int8{h[i], m[i], l[i]} {
				t.Fatalf("mode 3 block %d value %d: digits %v, want %v", b, i, got, [3]int8{h[i], m[i], l[i]})
			}
		}
		for i := range 4 {
			if gd := asF32(u[192+half:])[i]; gd != d {
				t.Fatalf("mode 3 block %d: d %v, want %v", b, gd, d)
			}
		}
	}
}

// TestQuantDigits checks quantDigits against its definition: the digits
// make an integer v = 2¹⁶·h + 2⁸·m + l within 1.75 of x/d, with m and l in
// [-128, 127] and |h| <= 127; zeros stay zeros and NaN makes d NaN. (v
// rounds x·(127·2¹⁶/max|x|), an f32 product within a quarter of x/d's value
// but for the f32 roundings of 127·2¹⁶/max|x| and of d, each 2⁻²⁴ of up to
// 127·2¹⁶: at most 0.5 + 0.25 + 1 steps.)
func TestQuantDigits(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	for trial := range 200 {
		x := make([]float32, qblock)
		scale := math.Pow(10, float64(trial%40-20))
		for i := range x {
			x[i] = float32(r.NormFloat64() * scale)
			if trial%7 == 0 && i%3 == 0 {
				x[i] = 0
			}
		}
		x[r.IntN(qblock)] *= 100 // one outlier
		var h, m, l [qblock]int8
		d := quantDigits(x, &h, &m, &l)
		for i, v := range x {
			if m[i] < -128 || h[i] < -127 || h[i] > 127 {
				t.Fatalf("trial %d value %d: digits %d %d %d out of range", trial, i, h[i], m[i], l[i])
			}
			q := 65536*float64(h[i]) + 256*float64(m[i]) + float64(l[i])
			if e := math.Abs(q - float64(v)/float64(d)); !(e <= 1.75) {
				t.Fatalf("trial %d value %d: %v is %v·d (d %v), %.3g steps from x/d", trial, i, v, q, d, e)
			}
		}
	}
	var h, m, l [qblock]int8
	if d := quantDigits(make([]float32, qblock), &h, &m, &l); d != 0 || h != [qblock]int8{} || m != h || l != h {
		t.Fatalf("zeros: d %v, digits %v %v %v", d, h, m, l)
	}
	nan := make([]float32, qblock)
	nan[3] = float32(math.NaN())
	if d := quantDigits(nan, &h, &m, &l); d == d {
		t.Fatalf("a NaN input: d %v, want NaN", d)
	}
}
