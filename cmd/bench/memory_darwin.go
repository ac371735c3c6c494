package main

import "golang.org/x/sys/unix"

// availableMemory returns the machine's physical memory (macOS does not
// report an available figure as simply; the estimate is checked against it).
func availableMemory() (int64, bool) {
	n, err := unix.SysctlUint64("hw.memsize")
	return int64(n), err == nil
}

// modelAlloc is nil: the synthetic model lives in the Go heap.
var modelAlloc func(n int) ([]byte, error)
