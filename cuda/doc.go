// Package cuda is a small binding of the CUDA driver API and NVRTC, loaded at
// run time with github.com/ebitengine/purego: no cgo, no CUDA headers or
// libraries at build time. It loads libcuda.so.1 (from the NVIDIA driver) and
// libnvrtc (from a CUDA toolkit or the nvidia-cuda-nvrtc wheel) on first use
// and reports where each came from (see Load and Libraries).
//
// # Threads and contexts
//
// A CUDA context is current per OS thread, while Go moves goroutines between
// threads. This package makes every call on the calling goroutine and leaves
// the binding to the caller: before a batch of calls, call Context.Bind, which
// locks the goroutine to its thread (runtime.LockOSThread) and makes the
// context current there (cuCtxSetCurrent), and call Context.Unbind after the
// batch. Both are cheap (tens of nanoseconds), so a backend binds around every
// public method; there is no dedicated goroutine and no channel hop per call.
//
// The context is the device's primary context (cuDevicePrimaryCtxRetain), the
// one the CUDA runtime also uses; CUDA 13 renamed cuCtxCreate and the primary
// context needs no flags.
//
// # Memory
//
// Device memory comes from plain cuMemAlloc allocations (never managed
// memory), cached by Pool; host staging memory is pinned (cuMemHostAlloc) and
// cycled by Staging so copies run asynchronously on a stream.
//
// On operating systems other than linux every entry point returns ErrNotLinux.
package cuda
