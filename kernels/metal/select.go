package metal

import (
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// topkTile is TOPK_TILE of 40_select.metal: the keys one threadgroup sorts.
const topkTile = 2048

// topkKeys returns TopK's scratch i as rows of n keys (8 bytes each),
// growing the buffer kept from earlier calls when it is too small.
func (b *Backend) topkKeys(i, rows, n int) (kernels.Tensor, error) {
	t := &b.topk[i]
	if t.IsZero() || t.Numel() < 2*rows*n {
		if !t.IsZero() {
			b.Free(*t)
		}
		nt, err := b.Alloc(dtype.I32, 2*rows*n)
		if err != nil {
			*t = kernels.Tensor{}
			return kernels.Tensor{}, err
		}
		*t = nt
	}
	v := *t
	v.Shape = []int{rows, 2 * n}
	return v, nil
}

// TopK writes the k greatest values of each row of x and their columns
// (kernels.Selector): topk_level sorts tiles of the row and keeps their k
// best, again on the kept keys until one tile is left, and topk_out writes
// that tile's.
func (b *Backend) TopK(values, ids, x kernels.Tensor, k int) error {
	const op = "TopK"
	xa, err := b.in(op, "x", x)
	if err != nil {
		return err
	}
	va, err := b.out(op, "values", values)
	if err != nil {
		return err
	}
	ia, err := b.out(op, "ids", ids)
	if err != nil {
		return err
	}
	if x.DType != dtype.F32 || values.DType != dtype.F32 || ids.DType != dtype.I32 {
		return b.errf(op, "x %v, values %v, ids %v (want F32, F32, I32)", x, values, ids)
	}
	m, n := x.Rows(), x.Cols()
	if k < 1 || k > min(n, kernels.MaxTopK) {
		return b.errf(op, "k=%d from rows of %d (want 1 ≤ k ≤ %d)", k, n, min(n, kernels.MaxTopK))
	}
	if values.Numel() != m*k || ids.Numel() != m*k {
		return b.errf(op, "values %v and ids %v (want %d rows of %d)", values, ids, m, k)
	}
	if overlap(va, ia) || overlap(va, xa) || overlap(ia, xa) {
		return b.errf(op, "outputs overlap")
	}
	if m == 0 {
		return nil
	}
	in, vals := xa, int32(1)
	for level := 0; ; level++ {
		tiles := ceilDiv(n, topkTile)
		keys, err := b.topkKeys(level%2, m, tiles*k)
		if err != nil {
			return err
		}
		ka, err := b.out(op, "keys", keys)
		if err != nil {
			return err
		}
		if err := b.run(&Dispatch{
			Kernel:  "topk_level",
			Groups:  [3]int{tiles, m, 1},
			Threads: [3]int{256, 1, 1},
			Args:    []Arg{in, ka, inline(topKParams{N: int32(n), K: int32(k), Values: vals})},
		}); err != nil {
			return err
		}
		in, vals, n = ka, 0, tiles*k
		in.Write = false
		if tiles == 1 {
			break
		}
	}
	return b.run(&Dispatch{
		Kernel:  "topk_out",
		Groups:  [3]int{ceilDiv(k, 32), m, 1},
		Threads: [3]int{32, 1, 1},
		Args:    []Arg{in, va, ia, inline(topKParams{K: int32(k)})},
	})
}
