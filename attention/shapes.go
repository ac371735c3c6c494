package attention

import "sync"

// Interned shapes: the views a step makes ([T, cols] and the like) take
// their Shape slices from here, so that a decode step does not allocate.
// An interned slice is never modified.
var shapes struct {
	sync.Mutex
	m map[[4]int][]int
}

// shapeOf returns an immutable slice equal to dims (at most four).
func shapeOf(dims ...int) []int {
	var k [4]int
	copy(k[:], dims)
	k[3] |= len(dims) << 56 // tell [2, 3] from [2, 3, 0]
	shapes.Lock()
	s, ok := shapes.m[k]
	if !ok {
		if shapes.m == nil {
			shapes.m = map[[4]int][]int{}
		}
		s = append([]int(nil), dims...)
		shapes.m[k] = s
	}
	shapes.Unlock()
	return s
}
