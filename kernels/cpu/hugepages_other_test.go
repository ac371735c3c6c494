//go:build !linux

package cpu

// benchBytes returns n bytes for benchmark weights from the Go heap.
func benchBytes(n int64) (data []byte, free func(), err error) {
	return make([]byte, n), func() {}, nil
}
