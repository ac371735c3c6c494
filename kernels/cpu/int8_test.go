package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
)

// int8Bound returns, per output, the bound on |int8 result - exact result|:
// the worst-case rounding of each input to its block's int8 grid,
// Σ_i |scale·q_i|·d_b/2, plus f32 accumulation (2e-6 of Σ|w||x|).
func int8Bound(x []float64, qm *qmat, m int) []float64 {
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
			d[b] /= 127
		}
		for c := range n {
			row := qm.words[c*wpr : (c+1)*wpr]
			var s, mag float64
			for i := range k {
				sc := qm.scales[c*gpr+i/qm.group]
				q := float64(refQ(row, qm.bits, i))
				s += math.Abs(sc*q) * d[i/qblock] / 2
				mag += (math.Abs(sc*q) + math.Abs(qm.biases[c*gpr+i/qm.group])) * math.Abs(xr[i])
			}
			out[r*n+c] = s*1.0001 + 2e-6*mag
		}
	}
	return out
}

func TestInt8MatMul(t *testing.T) {
	sets := KernelSets()
	if len(sets) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	r := rand.New(rand.NewPCG(31, 32))
	for _, ks := range sets {
		b := newBackend(t, WithKernels(ks), WithInt8Activations(true))
		if !b.Int8Activations() {
			t.Fatal("WithInt8Activations(true) is off")
		}
		for _, c := range simdCases {
			if c.bits != 4 && c.bits != 8 {
				continue
			}
			for _, s := range simdShapes(c) {
				n, k := s[0], s[1]
				t.Run(fmt.Sprintf("%s/%s/%dx%d", ks, c, n, k), func(t *testing.T) {
					qm := randQMat(r, n, k, c.bits, c.group, c.sdt)
					w := qm.upload(t, b, c.sdt)
					const m = 9
					x := rounded(dtype.F32, randNorm(r, m*k))
					xt := tensor(t, b, dtype.F32, x, m, k)
					want, _ := refMatMul(x, qm.dense(), qm.absDense(), m, n, k)
					bound := int8Bound(x, qm, m)
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
}
