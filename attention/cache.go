package attention

import (
	"fmt"

	"github.com/gemmoe/gemmoe/kernels"
)

// Cache is one layer's KV cache: K and V tensors of [Capacity, KVHeads·HeadDim]
// where position p sits in slot p mod Capacity.
//
// A sliding layer's cache is a ring of window + chunk - 1 slots, where chunk
// is the most tokens one forward call may carry: every key a query of the
// current call can see is still there, and memory stays bounded whatever the
// context. A full layer's cache holds every position; it grows in chunks up
// to the context limit.
type Cache struct {
	K, V     kernels.Tensor
	Capacity int
	Width    int  // KVHeads·HeadDim
	Ring     bool // sliding: fixed ring; full: grows
	Limit    int  // most positions a full cache may hold (the context length)
	Grow     int  // growth step of a full cache, in positions
}

// NewSlidingCache makes the ring cache of a sliding layer.
func NewSlidingCache(b kernels.Backend, window, chunk, width int) (*Cache, error) {
	c := &Cache{Capacity: window + chunk - 1, Width: width, Ring: true}
	return c, c.alloc(b, c.Capacity)
}

// NewFullCache makes the growing cache of a full-attention layer, starting
// with room for grow positions.
func NewFullCache(b kernels.Backend, limit, grow, width int) (*Cache, error) {
	c := &Cache{Width: width, Limit: limit, Grow: grow}
	return c, c.alloc(b, min(grow, limit))
}

func (c *Cache) alloc(b kernels.Backend, capacity int) error {
	dt := b.ActivationDType()
	k, err := b.Alloc(dt, capacity, c.Width)
	if err != nil {
		return fmt.Errorf("kv cache: %w", err)
	}
	v, err := b.Alloc(dt, capacity, c.Width)
	if err != nil {
		b.Free(k)
		return fmt.Errorf("kv cache: %w", err)
	}
	c.K, c.V, c.Capacity = k, v, capacity
	return nil
}

// Reserve makes a full cache hold positions up to last (inclusive), growing
// it by whole steps and keeping what it holds. A ring needs no reserve.
func (c *Cache) Reserve(b kernels.Backend, last int) error {
	if c.Ring || last < c.Capacity {
		return nil
	}
	if last >= c.Limit {
		return fmt.Errorf("kv cache: position %d is past the context limit of %d", last, c.Limit)
	}
	capacity := min(((last+1+c.Grow-1)/c.Grow)*c.Grow, c.Limit)
	oldK, oldV, oldCap := c.K, c.V, c.Capacity
	if err := c.alloc(b, capacity); err != nil {
		return err
	}
	for _, pair := range [][2]kernels.Tensor{{c.K, oldK}, {c.V, oldV}} {
		dst, err := pair[0].RowRange(0, oldCap)
		if err != nil {
			return err
		}
		// Scale by 1 is an exact copy in every float type.
		if err := b.Scale(dst, pair[1], 1); err != nil {
			return fmt.Errorf("kv cache grow: %w", err)
		}
	}
	b.Free(oldK)
	b.Free(oldV)
	return nil
}

// Store writes k and v rows [T, Width] for the given positions.
func (c *Cache) Store(b kernels.Backend, k, v, positions kernels.Tensor) error {
	if err := b.StoreKV(c.K, k, positions); err != nil {
		return fmt.Errorf("store k: %w", err)
	}
	if err := b.StoreKV(c.V, v, positions); err != nil {
		return fmt.Errorf("store v: %w", err)
	}
	return nil
}

// Bytes is the device memory the cache holds now.
func (c *Cache) Bytes() int64 { return c.K.Bytes() + c.V.Bytes() }

// Free releases the cache's tensors.
func (c *Cache) Free(b kernels.Backend) {
	if !c.K.IsZero() {
		b.Free(c.K)
		b.Free(c.V)
	}
	c.K, c.V = kernels.Tensor{}, kernels.Tensor{}
}
