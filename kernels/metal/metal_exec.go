package metal

import (
	"fmt"
	"os"

	mtl "github.com/gemmoe/gemmoe/metal"
)

// New returns the Metal Backend on the system's GPU. It fails with a clear
// error (wrapping metal.ErrUnavailable) unless this is an Apple Silicon Mac.
// The kernels are compiled from Source at first use (or loaded from the
// embedded metallib, or from the file named by $GEMMOE_METALLIB).
func New() (*Backend, error) {
	dev, err := mtl.Open()
	if err != nil {
		return nil, err
	}
	lib := Metallib()
	if p := os.Getenv("GEMMOE_METALLIB"); p != "" {
		if lib, err = os.ReadFile(p); err != nil {
			dev.Close()
			return nil, fmt.Errorf("metal: GEMMOE_METALLIB: %w", err)
		}
	}
	if err := dev.SetLibrary(Source(), lib); err != nil {
		dev.Close()
		return nil, err
	}
	return newBackend(&metalExec{dev: dev}), nil
}

// metalExec runs dispatches on a Metal device.
type metalExec struct {
	dev *mtl.Device
}

// metalMem is a Metal buffer.
type metalMem struct {
	buf *mtl.Buffer
}

func (m *metalMem) Bytes() []byte { return m.buf.Bytes() }
func (m *metalMem) Len() int64    { return m.buf.Len() }

func (e *metalExec) Name() string { return "metal" }

func (e *metalExec) Alloc(n int64) (Memory, error) {
	buf, err := e.dev.NewBuffer(n)
	if err != nil {
		return nil, err
	}
	return &metalMem{buf: buf}, nil
}

func (e *metalExec) Wrap(data []byte) (Memory, error) {
	buf, err := e.dev.WrapHost(data)
	if err != nil {
		return nil, err
	}
	return &metalMem{buf: buf}, nil
}

func (e *metalExec) Free(m Memory) {
	if mm, ok := m.(*metalMem); ok {
		mm.buf.Release()
	}
}

// bindings converts a dispatch's arguments to runtime bindings.
func bindings(d *Dispatch) ([]mtl.Binding, error) {
	bs := make([]mtl.Binding, len(d.Args))
	for i, a := range d.Args {
		if a.Mem == nil {
			bs[i] = mtl.Binding{Bytes: a.Bytes}
			continue
		}
		m, ok := a.Mem.(*metalMem)
		if !ok {
			return nil, fmt.Errorf("metal: %s: argument %d is not Metal memory", d, i)
		}
		bs[i] = mtl.Binding{Buf: m.buf, Offset: a.Offset, Len: a.Len}
	}
	return bs, nil
}

func (e *metalExec) Run(d *Dispatch) error {
	p, err := e.dev.Pipeline(d.Kernel, d.Consts.Values())
	if err != nil {
		return err
	}
	bs, err := bindings(d)
	if err != nil {
		return err
	}
	return e.dev.Dispatch(p, mtl.Size(d.Groups), mtl.Size(d.Threads), bs)
}

func (e *metalExec) Sync() error  { return e.dev.Wait() }
func (e *metalExec) Close() error { return e.dev.Close() }
