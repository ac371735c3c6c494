package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// TestTopK checks the selection against its definition (kernels.Selector):
// rows with many ties, NaNs, signed zeros and infinities; several rows; the
// shapes of a 262k vocabulary and of short rows; k from 1 to MaxTopK.
func TestTopK(t *testing.T) {
	_, be := gpus(t)
	r := rand.New(rand.NewPCG(4, 4))
	specials := []float32{float32(math.NaN()), float32(math.Copysign(0, -1)), 0, float32(math.Inf(-1)), float32(math.Inf(1))}
	for _, n := range []int{5, 1000, 4099, 262144} {
		for _, k := range []int{1, 2, 64, kernels.MaxTopK} {
			if k > n {
				continue
			}
			for _, m := range []int{1, 3} {
				t.Run(fmt.Sprintf("n%d_k%d_m%d", n, k, m), func(t *testing.T) {
					x := make([]float32, m*n)
					for i := range x {
						x[i] = float32(r.IntN(2*k+3)) - float32(k) // ties everywhere
						if r.IntN(50) == 0 {
							x[i] = specials[r.IntN(len(specials))]
						}
					}
					xt := put(t, be, dtype.F32, x, m, n)
					vals := poisoned(t, be, dtype.F32, m, k)
					minus := make([]int32, m*k) // poisoned: unwritten ids show as -1
					for i := range minus {
						minus[i] = -1
					}
					ids := putRaw(t, be, dtype.I32, i32bytes(minus), m, k)
					if err := be.TopK(vals, ids, xt, k); err != nil {
						t.Fatal(err)
					}
					gv, gi := get(t, be, vals), get(t, be, ids)
					for row := range m {
						xr := x[row*n : (row+1)*n]
						order := kernels.TopKOf(xr, k)
						for j := range k {
							want, got := order[j], int(gi[row*k+j])
							if got != want {
								t.Fatalf("row %d, place %d: column %d (%v), want %d (%v)", row, j, got, xr[got], want, xr[want])
							}
							wv, g := xr[want], gv[row*k+j]
							if !(g == wv || (g != g && wv != wv)) {
								t.Fatalf("row %d, place %d: value %v, want %v", row, j, g, wv)
							}
						}
					}
				})
			}
		}
	}
}

// TestTopKErrors: bad types and sizes are refused with an error.
func TestTopKErrors(t *testing.T) {
	_, be := gpus(t)
	x, _ := be.Alloc(dtype.F32, 2, 100)
	xb, _ := be.Alloc(dtype.BF16, 2, 100)
	v, _ := be.Alloc(dtype.F32, 2, 8)
	ids, _ := be.Alloc(dtype.I32, 2, 8)
	for _, c := range []struct {
		name         string
		vals, ids, x kernels.Tensor
		k            int
	}{
		{"bf16 row", v, ids, xb, 8},
		{"f32 ids", v, v, x, 8},
		{"k 0", v, ids, x, 0},
		{"k beyond the row", v, ids, x, 101},
		{"values of another k", v, ids, x, 4},
	} {
		if err := be.TopK(c.vals, c.ids, c.x, c.k); err == nil {
			t.Errorf("%s: no error", c.name)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}
