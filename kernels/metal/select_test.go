package metal

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// TestTopK checks the selection against its definition (kernels.Selector):
// rows with many ties, NaNs, signed zeros and infinities; several rows;
// rows of one tile and of several levels of tiles; k from 1 to MaxTopK.
func TestTopK(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	specials := []float64{math.NaN(), math.Copysign(0, -1), 0, math.Inf(-1), math.Inf(1)}
	for _, e := range gpus(t) {
		for _, c := range []struct{ n, k, m int }{
			{5, 1, 1}, {5, 2, 3}, {1000, 64, 2}, {4099, 1, 1}, {4099, 256, 2}, {40000, 64, 1}, {40000, 256, 1},
		} {
			t.Run(fmt.Sprintf("%s/n%d_k%d_m%d", e.name, c.n, c.k, c.m), func(t *testing.T) {
				n, k, m := c.n, c.k, c.m
				x := make([]float64, m*n)
				for i := range x {
					x[i] = float64(r.IntN(2*k+3) - k) // ties everywhere
					if r.IntN(50) == 0 {
						x[i] = specials[r.IntN(len(specials))]
					}
				}
				xt := e.put(t, dtype.F32, x, m, n)
				vals := e.put(t, dtype.F32, nil, m, k)
				ids := e.put(t, dtype.I32, nil, m, k)
				sel, ok := e.b.(kernels.Selector)
				if !ok {
					t.Fatal("not a kernels.Selector")
				}
				if err := sel.TopK(vals, ids, xt, k); err != nil {
					t.Fatal(err)
				}
				gv, gi := e.get(t, vals), e.get(t, ids)
				for row := range m {
					xr := x[row*n : (row+1)*n]
					xf := make([]float32, n)
					for i, v := range xr {
						xf[i] = float32(v)
					}
					order := kernels.TopKOf(xf, k)
					for j := range k {
						want, got := order[j], int(gi[row*k+j])
						if got != want {
							t.Fatalf("row %d, place %d: column %d, want %d (%v)", row, j, got, want, xr[want])
						}
						if wv, g := xr[want], gv[row*k+j]; !(g == wv || (math.IsNaN(g) && math.IsNaN(wv))) {
							t.Fatalf("row %d, place %d: value %v, want %v", row, j, g, wv)
						}
					}
				}
			})
		}
	}
}

// TestTopKErrors: bad types and sizes are refused with an error.
func TestTopKErrors(t *testing.T) {
	for _, e := range gpus(t) {
		b := e.b.(*Backend)
		x := e.put(t, dtype.F32, nil, 2, 100)
		xb := e.put(t, dtype.BF16, nil, 2, 100)
		v := e.put(t, dtype.F32, nil, 2, 8)
		ids := e.put(t, dtype.I32, nil, 2, 8)
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
			if err := b.TopK(c.vals, c.ids, c.x, c.k); err == nil {
				t.Errorf("%s: %s: no error", e.name, c.name)
			}
		}
	}
}
