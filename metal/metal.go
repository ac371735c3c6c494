// Package metal is gemmoe's Metal runtime, reached without cgo through
// github.com/ebitengine/purego/objc (the approach of Ebitengine's Metal
// driver): the system default device, one command queue, shared buffers,
// host memory (a checkpoint mapping) wrapped without copying, compute
// pipelines compiled from MSL source at first use and cached, and one command
// buffer with one compute encoder per step (from the first dispatch to Wait).
//
// It works on macOS on Apple Silicon (darwin/arm64); elsewhere Open returns an
// error that says so. The host-side logic that needs no Mac (splitting a large
// host region into overlapping buffer views, pipeline cache keys) is portable
// and tested everywhere.
package metal

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrUnavailable is wrapped by the errors of Open where Metal cannot be used.
var ErrUnavailable = errors.New("metal: unavailable")

// Constant is the value of an integer function constant ([[function_constant(Index)]])
// that specializes a pipeline.
type Constant struct {
	Index int
	Value int32
}

// PipelineKey is the cache key of the pipeline of function name specialized
// with consts: the name and the constants sorted by index, e.g.
// "qmv[0=4,1=64,2=3]". Two lists with the same values in a different order
// give the same key.
func PipelineKey(name string, consts []Constant) string {
	cs := append([]Constant(nil), consts...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].Index < cs[j].Index })
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('[')
	for i, c := range cs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d=%d", c.Index, c.Value)
	}
	b.WriteByte(']')
	return b.String()
}

// checkConstants reports duplicate or negative constant indices.
func checkConstants(name string, consts []Constant) error {
	seen := map[int]bool{}
	for _, c := range consts {
		if c.Index < 0 {
			return fmt.Errorf("metal: pipeline %s: negative function constant index %d", name, c.Index)
		}
		if seen[c.Index] {
			return fmt.Errorf("metal: pipeline %s: function constant %d given twice", name, c.Index)
		}
		seen[c.Index] = true
	}
	return nil
}

// Views is the plan for exposing a host region of Len bytes as Metal buffers
// of at most a device's maxBufferLength. The region is padded to whole pages
// (a mapping's last page is always mapped in full) and covered by views of
// ViewLen bytes (the last one may be shorter) starting every Stride bytes.
// Consecutive views overlap by ViewLen-Stride bytes, so every byte range up to
// that long lies entirely in one view. ViewLen and Stride are multiples of
// Page, so every view starts page-aligned when the region does.
type Views struct {
	Len     int64
	Page    int64
	ViewLen int64
	Stride  int64
}

// PlanViews plans the views of a region of length bytes for buffers of at most
// maxLen bytes on pages of page bytes. A region that fits in one buffer gets
// one view. Larger ones get views of the largest page multiple ≤ maxLen that
// overlap by half of it (rounded down to pages).
func PlanViews(length, maxLen, page int64) (Views, error) {
	if length <= 0 {
		return Views{}, fmt.Errorf("metal: cannot wrap a region of %d bytes", length)
	}
	if page <= 0 || page&(page-1) != 0 {
		return Views{}, fmt.Errorf("metal: page size %d is not a power of two", page)
	}
	viewLen := maxLen / page * page
	if viewLen < 2*page {
		return Views{}, fmt.Errorf("metal: maximum buffer length %d is under two %d-byte pages", maxLen, page)
	}
	padded := roundUp(length, page)
	if padded <= viewLen {
		return Views{Len: length, Page: page, ViewLen: padded, Stride: padded}, nil
	}
	overlap := viewLen / 2 / page * page
	return Views{Len: length, Page: page, ViewLen: viewLen, Stride: viewLen - overlap}, nil
}

// Padded returns the region's length rounded up to whole pages.
func (v Views) Padded() int64 { return roundUp(v.Len, v.Page) }

// Count returns the number of views.
func (v Views) Count() int {
	if v.Len <= 0 || v.Stride <= 0 || v.Page <= 0 {
		return 0
	}
	p := v.Padded()
	if p <= v.ViewLen {
		return 1
	}
	return int((p-v.ViewLen+v.Stride-1)/v.Stride) + 1
}

// View returns the start and length of view i.
func (v Views) View(i int) (start, n int64) {
	start = int64(i) * v.Stride
	n = min(v.ViewLen, v.Padded()-start)
	return start, n
}

// Overlap returns the length of the longest range guaranteed to lie in one view.
func (v Views) Overlap() int64 {
	if v.Count() <= 1 {
		return v.Len
	}
	return v.ViewLen - v.Stride
}

// Find returns the view that holds the byte range [off, off+n) and the
// range's offset inside it.
func (v Views) Find(off, n int64) (view int, rel int64, err error) {
	if off < 0 || n < 0 || off+n > v.Len {
		return 0, 0, fmt.Errorf("metal: range [%d, %d) outside the %d-byte region", off, off+n, v.Len)
	}
	count := v.Count()
	if count == 0 {
		return 0, 0, fmt.Errorf("metal: empty view plan")
	}
	// The view starting last at or before off ends last among those that
	// hold off: if the range does not fit there, it fits nowhere.
	i := min(int(off/v.Stride), count-1)
	s, l := v.View(i)
	if off+n <= s+l {
		return i, off - s, nil
	}
	return 0, 0, fmt.Errorf("metal: the %d-byte range at %d does not fit in one Metal buffer view "+
		"(views of %d bytes overlap by %d): the device's maximum buffer length is too small for this tensor",
		n, off, v.ViewLen, v.Overlap())
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// Binding is one argument of a dispatch: a byte range of a buffer bound at
// the argument's index, or, when Buf is nil, inline constant bytes
// (setBytes, at most 4 KiB).
type Binding struct {
	Buf    *Buffer
	Offset int64
	Len    int64
	Bytes  []byte
}

// Size is a grid or threadgroup size in threads or threadgroups.
type Size [3]int

// Threads returns the product of the three dimensions.
func (s Size) Threads() int { return s[0] * s[1] * s[2] }

// checkDispatch validates the sizes and bindings of a dispatch that do not
// depend on the device.
func checkDispatch(name string, groups, threads Size, args []Binding, maxThreads int) error {
	for i := range 3 {
		if groups[i] <= 0 || threads[i] <= 0 {
			return fmt.Errorf("metal: dispatch of %s has grid %v and threadgroup %v (want positive sizes)", name, groups, threads)
		}
	}
	if threads.Threads() > maxThreads {
		return fmt.Errorf("metal: dispatch of %s has %d threads per threadgroup; the pipeline allows %d", name, threads.Threads(), maxThreads)
	}
	if len(args) > 31 {
		return fmt.Errorf("metal: dispatch of %s binds %d buffers (at most 31)", name, len(args))
	}
	for i, a := range args {
		if a.Buf == nil {
			if len(a.Bytes) == 0 || len(a.Bytes) > 4096 {
				return fmt.Errorf("metal: dispatch of %s: inline argument %d has %d bytes (want 1 to 4096)", name, i, len(a.Bytes))
			}
			continue
		}
		if a.Offset < 0 || a.Len < 0 {
			return fmt.Errorf("metal: dispatch of %s: argument %d has range [%d, +%d)", name, i, a.Offset, a.Len)
		}
	}
	return nil
}
