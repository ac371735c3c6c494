package cuda

import (
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"
)

// unsafeBytes views n bytes of C memory at p as a slice.
func unsafeBytes(p unsafe.Pointer, n int) []byte { return unsafe.Slice((*byte)(p), n) }

// keepAlive keeps v reachable until this point.
func keepAlive(v any) { runtime.KeepAlive(v) }

// puregoCall calls a C function and returns its raw results.
//
//go:uintptrescapes
func puregoCall(fn uintptr, args ...uintptr) (r1, r2, errno uintptr) {
	return purego.SyscallN(fn, args...)
}
