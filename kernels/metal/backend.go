// Package metal is gemmoe's Metal backend: MSL kernels for every op of the
// kernels.Backend contract (msl/*.metal), and a Backend that turns each op
// into Dispatch values and hands them to an Executor: the Metal executor on
// Apple Silicon (New, through package github.com/gemmoe/gemmoe/metal), or a
// CPU emulator that compiles the same MSL as C++ (NewEmulated), which is how
// the kernels are tested on machines without a Mac.
//
// Activations are bf16 between ops, with f32 accumulation and f32 inside
// norms, softmax, attention and the router (like mlx-native's bf16 I/O
// kernels); every op reads the element type of each tensor from the tensor,
// so F32 and F16 tensors work too.
package metal

import (
	"fmt"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Backend implements kernels.Backend with the Metal kernels. Ops are
// validated on the host and enqueued; on Metal they run when Sync (or an
// Upload or Download) ends the step's command buffer, in the emulator at once.
// Like every kernels.Backend it is used by one goroutine at a time.
type Backend struct {
	exec   Executor
	bufs   map[*buffer]bool
	closed bool

	// act is the activation dtype the backend asks for (BF16 by default).
	act dtype.DType
	// tiledMinRows is the number of rows from which MatMul uses the tiled
	// kernel (qmm) instead of the matrix-vector kernel (qmv).
	tiledMinRows int
	// trace, when set, sees every dispatch before it runs (tests).
	trace func(*Dispatch)
	// topk holds TopK's kept keys between calls, the levels alternating
	// between the two.
	topk [2]kernels.Tensor
}

var _ kernels.Backend = (*Backend)(nil)

// buffer is a Backend's device buffer.
type buffer struct {
	b     *Backend
	mem   Memory
	ro    bool // host memory wrapped by WrapHost
	freed bool
}

// Len is the size of the buffer in bytes.
func (b *buffer) Len() int64 { return b.mem.Len() }

// NewWithExecutor returns a Backend that runs its dispatches on e.
func NewWithExecutor(e Executor) *Backend { return newBackend(e) }

func newBackend(e Executor) *Backend {
	return &Backend{exec: e, bufs: map[*buffer]bool{}, act: dtype.BF16, tiledMinRows: 8}
}

// Name returns "metal" or "metal-emulated".
func (b *Backend) Name() string { return b.exec.Name() }

// ActivationDType returns the element type the backend wants activations in:
// BF16 unless SetActivationDType chose another.
func (b *Backend) ActivationDType() dtype.DType { return b.act }

// SetActivationDType makes ActivationDType return dt (F32, F16 or BF16).
// Every kernel reads and writes any of the three, so F32 activations give the
// Metal kernels without bf16 rounding between ops (for accuracy checks).
// Call it before the model allocates its activations.
func (b *Backend) SetActivationDType(dt dtype.DType) error {
	if !dt.IsFloat() {
		return fmt.Errorf("%s: activation dtype %s (want F32, F16 or BF16)", b.Name(), dt)
	}
	b.act = dt
	return nil
}

func (b *Backend) live() error {
	if b.closed {
		return fmt.Errorf("%s: backend is closed", b.Name())
	}
	return nil
}

// Alloc returns a new zeroed device tensor.
func (b *Backend) Alloc(dt dtype.DType, shape ...int) (kernels.Tensor, error) {
	if err := b.live(); err != nil {
		return kernels.Tensor{}, err
	}
	if dt.Size() == 0 {
		return kernels.Tensor{}, fmt.Errorf("%s: Alloc of dtype %s", b.Name(), dt)
	}
	n := int64(dt.Size())
	for _, d := range shape {
		if d < 0 {
			return kernels.Tensor{}, fmt.Errorf("%s: Alloc of shape %v", b.Name(), shape)
		}
		n *= int64(d)
	}
	mem, err := b.exec.Alloc(n)
	if err != nil {
		return kernels.Tensor{}, err
	}
	buf := &buffer{b: b, mem: mem}
	b.bufs[buf] = true
	return kernels.Tensor{Buf: buf, DType: dt, Shape: append([]int(nil), shape...)}, nil
}

// Free releases a tensor made by Alloc. Other tensors are left alone.
func (b *Backend) Free(t kernels.Tensor) {
	buf, ok := t.Buf.(*buffer)
	if !ok || buf.b != b || buf.ro || buf.freed || b.closed {
		return
	}
	buf.freed = true
	delete(b.bufs, buf)
	b.exec.Free(buf.mem)
}

// WrapHost makes a read-only device buffer over host bytes without copying
// on Apple Silicon (page-aligned memory such as a file mapping), with one
// copy in the emulator.
func (b *Backend) WrapHost(data []byte) (kernels.Buffer, error) {
	if err := b.live(); err != nil {
		return nil, err
	}
	mem, err := b.exec.Wrap(data)
	if err != nil {
		return nil, err
	}
	buf := &buffer{b: b, mem: mem, ro: true}
	b.bufs[buf] = true
	return buf, nil
}

// Upload copies host bytes into t after the work enqueued before it.
func (b *Backend) Upload(t kernels.Tensor, src []byte) error {
	buf, err := b.check("Upload", "t", t, true)
	if err != nil {
		return err
	}
	if int64(len(src)) != t.Bytes() {
		return fmt.Errorf("%s: Upload of %d bytes into %v (%d bytes)", b.Name(), len(src), t, t.Bytes())
	}
	if err := b.Sync(); err != nil {
		return err
	}
	copy(buf.mem.Bytes()[t.Offset:], src)
	return nil
}

// Download copies t into host bytes after the work enqueued before it.
func (b *Backend) Download(dst []byte, t kernels.Tensor) error {
	buf, err := b.check("Download", "t", t, false)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Bytes() {
		return fmt.Errorf("%s: Download of %v (%d bytes) into %d bytes", b.Name(), t, t.Bytes(), len(dst))
	}
	if err := b.Sync(); err != nil {
		return err
	}
	copy(dst, buf.mem.Bytes()[t.Offset:t.Offset+t.Bytes()])
	return nil
}

// Sync waits until every enqueued op has finished.
func (b *Backend) Sync() error {
	if err := b.live(); err != nil {
		return err
	}
	return b.exec.Sync()
}

// Close waits for pending work and releases everything the backend holds.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	err := b.exec.Sync()
	for buf := range b.bufs {
		buf.freed = true
		b.exec.Free(buf.mem)
	}
	b.bufs = nil
	b.closed = true
	if cerr := b.exec.Close(); err == nil {
		err = cerr
	}
	return err
}

// check validates that t is live memory of this backend, in range, aligned,
// and writable when write is set.
func (b *Backend) check(op, name string, t kernels.Tensor, write bool) (*buffer, error) {
	if err := b.live(); err != nil {
		return nil, err
	}
	if t.Buf == nil {
		return nil, fmt.Errorf("%s: %s: %s has no buffer", b.Name(), op, name)
	}
	buf, ok := t.Buf.(*buffer)
	if !ok || buf.b != b {
		return nil, fmt.Errorf("%s: %s: %s %v is not memory of this backend", b.Name(), op, name, t)
	}
	if buf.freed {
		return nil, fmt.Errorf("%s: %s: %s %v was freed", b.Name(), op, name, t)
	}
	if write && buf.ro {
		return nil, fmt.Errorf("%s: %s: %s %v is read-only host memory (WrapHost)", b.Name(), op, name, t)
	}
	size := int64(t.DType.Size())
	if size == 0 {
		return nil, fmt.Errorf("%s: %s: %s has dtype %s", b.Name(), op, name, t.DType)
	}
	for _, d := range t.Shape {
		if d < 0 {
			return nil, fmt.Errorf("%s: %s: %s has shape %v", b.Name(), op, name, t.Shape)
		}
	}
	if t.Offset < 0 || t.Offset+t.Bytes() > buf.Len() {
		return nil, fmt.Errorf("%s: %s: %s %v at offset %d overruns its %d-byte buffer", b.Name(), op, name, t, t.Offset, buf.Len())
	}
	if t.Offset%size != 0 {
		return nil, fmt.Errorf("%s: %s: %s %v at offset %d is not aligned to its %d-byte elements", b.Name(), op, name, t, t.Offset, size)
	}
	return buf, nil
}

// in and out validate a tensor argument and return it as a dispatch Arg.
func (b *Backend) in(op, name string, t kernels.Tensor) (Arg, error) {
	buf, err := b.check(op, name, t, false)
	if err != nil {
		return Arg{}, err
	}
	return Arg{Mem: buf.mem, Offset: t.Offset, Len: t.Bytes()}, nil
}

func (b *Backend) out(op, name string, t kernels.Tensor) (Arg, error) {
	buf, err := b.check(op, name, t, true)
	if err != nil {
		return Arg{}, err
	}
	return Arg{Mem: buf.mem, Offset: t.Offset, Len: t.Bytes(), Write: true}, nil
}

// unused returns an argument for a buffer the kernel does not read
// (an absent optional tensor): an empty range of a.
func unused(a Arg) Arg {
	return Arg{Mem: a.Mem, Offset: a.Offset}
}

// overlap reports whether two argument ranges share bytes.
func overlap(a, c Arg) bool {
	return a.Mem != nil && a.Mem == c.Mem && a.Offset < c.Offset+c.Len && c.Offset < a.Offset+a.Len
}

// sameRange reports whether two arguments are the same bytes.
func sameRange(a, c Arg) bool {
	return a.Mem == c.Mem && a.Offset == c.Offset && a.Len == c.Len
}

func (b *Backend) run(d *Dispatch) error {
	if b.trace != nil {
		b.trace(d)
	}
	return b.exec.Run(d)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// rowThreads is the threadgroup size of a row-wise kernel over n columns.
func rowThreads(n int) int { return min(max(ceilDiv(n, 32)*32, 32), 256) }

func (b *Backend) errf(op, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", b.Name(), op, fmt.Sprintf(format, args...))
}

func isFloat(t kernels.Tensor) bool { return t.DType.IsFloat() }
