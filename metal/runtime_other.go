//go:build !darwin

package metal

import (
	"fmt"
	"runtime"
)

func unavailable() error {
	return fmt.Errorf("%w: Metal needs macOS on Apple Silicon (darwin/arm64); this is %s/%s (use the cpu backend)", ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}

// Device is a Metal GPU. On this OS there is none: Open always fails.
type Device struct{}

// Open fails with an error wrapping ErrUnavailable: Metal exists only on macOS.
func Open() (*Device, error) { return nil, unavailable() }

// Name returns the GPU's name.
func (d *Device) Name() string { return "" }

// MaxBufferLength returns the largest buffer the device can make.
func (d *Device) MaxBufferLength() int64 { return 0 }

// SetLibrary sets the MSL source of the kernels and an optional metallib.
func (d *Device) SetLibrary(source string, metallib []byte) error { return unavailable() }

// Pipeline is a compute pipeline state.
type Pipeline struct{}

// Key returns the pipeline's cache key.
func (p *Pipeline) Key() string { return "" }

// MaxThreads returns the most threads a threadgroup of this pipeline may have.
func (p *Pipeline) MaxThreads() int { return 0 }

// Pipeline returns the pipeline of kernel name specialized with consts.
func (d *Device) Pipeline(name string, consts []Constant) (*Pipeline, error) {
	return nil, unavailable()
}

// Buffer is device memory shared with the host.
type Buffer struct{}

// Bytes returns the host view of the buffer's memory.
func (b *Buffer) Bytes() []byte { return nil }

// Len returns the buffer's length in bytes.
func (b *Buffer) Len() int64 { return 0 }

// Release releases the buffer.
func (b *Buffer) Release() {}

// NewBuffer allocates a zero-filled shared buffer of n bytes.
func (d *Device) NewBuffer(n int64) (*Buffer, error) { return nil, unavailable() }

// WrapHost makes a buffer over host memory without copying.
func (d *Device) WrapHost(data []byte) (*Buffer, error) { return nil, unavailable() }

// Dispatch encodes one dispatch of p.
func (d *Device) Dispatch(p *Pipeline, groups, threads Size, args []Binding) error {
	return unavailable()
}

// Wait commits the open command buffer and waits for it.
func (d *Device) Wait() error { return unavailable() }

// Close releases the device.
func (d *Device) Close() error { return nil }
