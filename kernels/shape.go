package kernels

import "sync"

// Interned shapes: the views a forward step makes ([T, cols] and the like)
// take their Shape slices from here, so that a decode step does not allocate.
var shapes struct {
	sync.Mutex
	m map[[4]int][]int
}

// Shape returns a shape slice equal to dims (at most four dimensions) that
// is shared by every caller asking for the same dims and must never be
// modified. Views made per step use it to stay allocation-free.
func Shape(dims ...int) []int {
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
