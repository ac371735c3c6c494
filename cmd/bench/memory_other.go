//go:build !linux && !darwin

package main

// availableMemory is unknown here; the size check is skipped.
func availableMemory() (int64, bool) { return 0, false }

// modelAlloc is nil: the synthetic model lives in the Go heap.
var modelAlloc func(n int) ([]byte, error)
