//go:build purego || !(amd64 || arm64)

package cpu

// archKernels returns no SIMD kernels: this build runs the generic Go
// kernels only.
func archKernels() []*kernelSet { return nil }
