package cuda

import (
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// topkMaxSort is the most keys one block of select.cu sorts (8 bytes each
// in shared memory: 128 KiB).
const topkMaxSort = 16384

// topkPlan returns the tile of a TopK launch for rows of n values: a power
// of two near √(n·k), so that sorting a tile and sorting the tiles'
// survivors take about as long, between 2048 and topkMaxSort; the tiles of
// a row, and the survivors' count rounded up to a power of two (what the
// merge sorts).
func topkPlan(n, k int) (tile, tiles, merge int) {
	tile = 2048
	for tile < topkMaxSort && tile*tile < n*k {
		tile *= 2
	}
	tiles = ceilDiv(n, tile)
	merge = 1
	for merge < tiles*k {
		merge *= 2
	}
	return tile, tiles, merge
}

// TopK writes the k greatest values of each row of x and their columns
// (kernels.Selector) in two launches: blocks sort tiles of a row and keep
// their k best, then one block a row sorts those (select.cu).
func (b *Backend) TopK(values, ids, x kernels.Tensor, k int) error {
	if x.DType != dtype.F32 || values.DType != dtype.F32 || ids.DType != dtype.I32 {
		return fmt.Errorf("cuda: TopK of %s into %s values and %s ids (want F32, F32, I32)", x.DType, values.DType, ids.DType)
	}
	M, N := x.Rows(), x.Cols()
	if k < 1 || k > min(N, kernels.MaxTopK) {
		return fmt.Errorf("cuda: TopK of %d values from rows of %d (want 1 to %d)", k, N, min(N, kernels.MaxTopK))
	}
	if values.Numel() != M*k || ids.Numel() != M*k {
		return fmt.Errorf("cuda: TopK values%v ids%v (want %d rows of %d)", values.Shape, ids.Shape, M, k)
	}
	tile, tiles, merge := topkPlan(N, k)
	if merge > topkMaxSort || N > math.MaxInt32 {
		return fmt.Errorf("cuda: TopK of %d from rows of %d: the tiles keep more than %d values", k, N, topkMaxSort)
	}
	if M > maxBlocksY {
		return fmt.Errorf("cuda: TopK of %d rows (at most %d)", M, maxBlocksY)
	}
	return b.locked(func() error {
		ptrs, err := b.devs([]kernels.Tensor{values, ids, x}, "TopK values", "TopK ids", "TopK x")
		if err != nil || M == 0 {
			return err
		}
		part, err := b.scratch(int64(M*tiles*k) * 8)
		if err != nil {
			return err
		}
		defer b.release(part)
		block := cuda.Dim3{X: 1024, Y: 1, Z: 1}
		a := b.args.Reset()
		a.Ptr(ptrs[2]).I32(N).I32(k).I32(tile).Ptr(part)
		if err := b.launch("select", "topk_tiles", cuda.Dim3{X: tiles, Y: M, Z: 1}, block, 8*tile, a); err != nil {
			return err
		}
		a = b.args.Reset()
		a.Ptr(part).I32(tiles * k).I32(merge).I32(k).Ptr(ptrs[0]).Ptr(ptrs[1])
		return b.launch("select", "topk_merge", cuda.Dim3{X: M, Y: 1, Z: 1}, block, 8*merge, a)
	})
}
