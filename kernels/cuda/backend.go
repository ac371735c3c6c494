// Package cuda is the NVIDIA GPU backend of gemmoe: kernels.Backend on the
// CUDA driver API, with CUDA C kernels (embedded .cu sources) compiled by
// NVRTC for the device's architecture on first use and cached on disk. It
// needs no cgo: the driver and NVRTC are loaded at run time (package
// github.com/gemmoe/gemmoe/cuda). On machines without an NVIDIA driver, and
// on operating systems other than linux, New returns an error.
//
// Activations are bf16 by default (f32 accumulation; f32 inside norms,
// softmax and the router); WithActivationDType(dtype.F32) keeps them in f32,
// which is what tests compare with the CPU backend. Every op reads the element
// type of each tensor, so F32, F16 and BF16 activations all work.
//
// All ops are enqueued on one stream. A decode step can be recorded once as
// a CUDA graph (BeginCapture, EndCapture) and replayed with Graph.Launch.
// The backend is a kernels.Fuser (a decode layer in 13 launches instead of
// 37, fused.go), and on sm_90 the kernels of a recorded graph launch with
// programmatic dependent launch (GEMMOE_CUDA_PDL, see probePDL).
//
// Measured accuracy (tests, random inputs, max |error| / max |reference|
// against a float64 reference computed from the same rounded inputs): with
// f32 activations at most 1.4e-5 (attention) and 5.6e-6 (quantized matmul);
// with bf16 activations at most 4.0e-3 (matmul, tensor-core GEMM with the
// weights rounded to bf16), 2.7e-3 (attention), 3.3e-3 (elementwise: the
// output rounding); the router is f32 throughout (6e-8). Tests allow 2e-4
// and 1.5e-2. NOTES.md has the benchmark numbers.
package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Option configures New.
type Option func(*config)

type config struct {
	device   int
	act      dtype.DType
	cacheDir string
	noCache  bool
}

// WithDevice selects the CUDA device ordinal (default 0).
func WithDevice(i int) Option { return func(c *config) { c.device = i } }

// WithActivationDType sets the activation type: dtype.BF16 (default) or
// dtype.F32 (or dtype.F16).
func WithActivationDType(dt dtype.DType) Option { return func(c *config) { c.act = dt } }

// WithCacheDir sets where compiled kernels are cached ("" disables the cache).
// The default is DefaultCacheDir().
func WithCacheDir(dir string) Option {
	return func(c *config) { c.cacheDir, c.noCache = dir, dir == "" }
}

// Backend is the CUDA implementation of kernels.Backend. Its methods must be
// called from one goroutine at a time (any goroutine: each call binds the
// context to the calling thread for its duration).
type Backend struct {
	mu       sync.Mutex // guards against concurrent misuse, cheaply
	ctx      *cuda.Context
	props    cuda.Properties
	libs     cuda.Libraries
	stream   *cuda.Stream
	pool     *cuda.Pool
	staging  *cuda.Staging
	act      dtype.DType
	cacheDir string
	mods     map[string]*cuda.Module
	fns      map[fnKey]*cuda.Function
	occ      map[occKey]int
	args     *cuda.Args
	wrapped  []cuda.DevicePtr
	closed   bool

	capturing bool
	held      []cuda.DevicePtr // pool blocks freed during a capture

	compiles, cacheHits int // kernel modules built / read from the disk cache

	mvKernel string // benchmarks: force this matrix-vector kernel variant
	mvNoTC   bool   // benchmarks: no tensor-core matrix-vector kernel (qmvt)

	// Benchmarks and tests: gemmPlain runs every bf16 GEMM through gemm_tc
	// (not the pipelined gemm_q4, gemm_q4b, gemm_q8); mvRowsMode chooses
	// between matrix-vector launches and GEMMs for products of several rows
	// (0: by shape, see mvRows and mvPairs; -1: GEMM; +1: matrix-vector
	// wherever the kernels can).
	gemmPlain  bool
	mvRowsMode int
	noSplitK   bool // benchmarks and tests: GEMMs without split K
	attnPlain  bool // tests and benchmarks: no tensor-core prefill attention
	attnWhole  bool // benchmarks: one block a kv head's heads (no attnHeadSplit)

	mvDepth int // fused matrix-vector pipeline depth forced by GEMMOE_CUDA_MVDEPTH (2 or 3; 0: by shape)
	mvKS    int // warps a row of the fused one-row kernels forced by GEMMOE_CUDA_MVKS (1, 2, 4, 8; 0: by shape)

	// kernels.Concurrent: between Side and Join, main is the backend's own
	// stream and side the second one; frees wait in deferred until Join.
	main, side       *cuda.Stream
	forkEv, joinEv   *cuda.Event
	sideOpen, inSide bool
	deferred         []cuda.DevicePtr

	pdl     bool // kernels launch with programmatic dependent launch
	pdlMode int  // ... and let the next one launch: 0 early, 1 late, 2 mid (the kernels' PDL_MODE)
}

type occKey struct {
	f    *cuda.Function
	smem int
}

var _ kernels.Backend = (*Backend)(nil)

// buffer is a device allocation of this backend.
type buffer struct {
	ptr    cuda.DevicePtr
	size   int64
	owner  *Backend
	pooled bool
}

func (b *buffer) Len() int64 { return b.size }

// New opens device 0 (or WithDevice's) and returns a backend on it. It fails
// with a clear error when there is no NVIDIA driver, no device or no NVRTC.
func New(opts ...Option) (*Backend, error) {
	c := config{act: dtype.BF16}
	for _, o := range opts {
		o(&c)
	}
	if !c.act.IsFloat() {
		return nil, fmt.Errorf("cuda: activation type %s is not F32, F16 or BF16", c.act)
	}
	if !c.noCache && c.cacheDir == "" {
		c.cacheDir = DefaultCacheDir()
	}
	if err := cuda.Load(); err != nil {
		return nil, err
	}
	if err := cuda.NVRTCAvailable(); err != nil {
		return nil, fmt.Errorf("cuda: the kernels need NVRTC: %w", err)
	}
	dev, err := cuda.GetDevice(c.device)
	if err != nil {
		return nil, err
	}
	props, err := dev.Properties()
	if err != nil {
		return nil, err
	}
	if props.Major < 7 {
		return nil, fmt.Errorf("cuda: %s has compute capability %d.%d; gemmoe needs 7.0 or newer", props.Name, props.Major, props.Minor)
	}
	ctx, err := cuda.NewContext(dev)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		ctx: ctx, props: props, act: c.act, cacheDir: c.cacheDir,
		mods: map[string]*cuda.Module{}, fns: map[fnKey]*cuda.Function{}, occ: map[occKey]int{},
		args: new(cuda.Args),
	}
	b.libs, _ = cuda.LoadedLibraries()
	if err := ctx.Bind(); err != nil {
		ctx.Close()
		return nil, err
	}
	defer ctx.Unbind()
	if b.stream, err = cuda.NewStream(); err != nil {
		ctx.Close()
		return nil, err
	}
	b.pool = cuda.NewPool()
	b.pool.BeforeTrim = b.stream.Sync
	switch v := os.Getenv("GEMMOE_CUDA_MVKS"); v {
	case "1", "2", "4", "8":
		b.mvKS = int(v[0] - '0')
	}
	switch os.Getenv("GEMMOE_CUDA_MVDEPTH") {
	case "2":
		b.mvDepth = 2
	case "3":
		b.mvDepth = 3
	}
	ctx.Unbind()
	b.pdl = b.probePDL()
	ctx.Bind()
	return b, nil
}

// probePDL turns on programmatic dependent launch where the device (sm_90+)
// and driver have it and GEMMOE_CUDA_PDL is not 0: in captured graphs (the
// decode step) each kernel's launch overlaps the end of the kernel before
// it; direct launches (prefill) do without. By default ("mid") a kernel lets
// the next one launch once its own wait has returned, so the next kernel's
// blocks can issue their weight loads on idle SMs while it works, and no
// third kernel is in flight; GEMMOE_CUDA_PDL=late leaves that to each
// block's exit, =early to each kernel's start (which lets a chain of
// waiting kernels fill the SMs). Measured in NOTES.md. The probe runs two
// kernels directly and through a captured graph (with PDL), and keeps PDL
// off if anything fails.
func (b *Backend) probePDL() bool {
	mode := os.Getenv("GEMMOE_CUDA_PDL")
	if mode == "0" || b.props.Major < 9 || !cuda.PDLSupported() {
		return false
	}
	switch mode {
	case "early":
		b.pdlMode = 0
	case "late":
		b.pdlMode = 1
	default:
		b.pdlMode = 2
	}
	b.pdl = true
	ok := func() bool {
		x, err := b.Alloc(dtype.F32, 64)
		if err != nil {
			return false
		}
		defer b.Free(x)
		step := func() error {
			if err := b.Scale(x, x, 2); err != nil {
				return err
			}
			return b.Scale(x, x, 0.5)
		}
		if step() != nil || b.Sync() != nil || b.BeginCapture() != nil {
			return false
		}
		serr := step()
		g, err := b.EndCapture()
		if err != nil {
			return false
		}
		defer g.Close()
		return serr == nil && g.Launch() == nil && b.Sync() == nil
	}()
	b.pdl = false
	if !ok {
		b.Sync()
	}
	return ok
}

// PDL reports whether kernels launch with programmatic dependent launch.
func (b *Backend) PDL() bool { return b.pdl }

// Name returns "cuda".
func (b *Backend) Name() string { return "cuda" }

// ActivationDType returns the activation type chosen at New.
func (b *Backend) ActivationDType() dtype.DType { return b.act }

// Properties describes the device.
func (b *Backend) Properties() cuda.Properties { return b.props }

// Libraries tells where libcuda and libnvrtc were loaded from.
func (b *Backend) Libraries() cuda.Libraries { return b.libs }

// enter binds the context to the calling thread; every public method calls
// it and defers leave.
func (b *Backend) enter() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errors.New("cuda: backend is closed")
	}
	if err := b.ctx.Bind(); err != nil {
		b.mu.Unlock()
		return err
	}
	return nil
}

func (b *Backend) leave() {
	b.ctx.Unbind()
	b.mu.Unlock()
}

// dev returns the device address of t after checking that t lies inside a
// buffer of this backend.
func (b *Backend) dev(t kernels.Tensor, what string) (cuda.DevicePtr, error) {
	if t.Buf == nil {
		return 0, fmt.Errorf("cuda: %s has no buffer", what)
	}
	buf, ok := t.Buf.(*buffer)
	if !ok || buf.owner != b {
		return 0, fmt.Errorf("cuda: %s is not a buffer of this CUDA backend", what)
	}
	if t.Offset < 0 || t.Offset+t.Bytes() > buf.size {
		return 0, fmt.Errorf("cuda: %s %v at offset %d overruns its %d-byte buffer", what, t, t.Offset, buf.size)
	}
	if t.DType.Size() == 0 {
		return 0, fmt.Errorf("cuda: %s has dtype %s", what, t.DType)
	}
	p := buf.ptr + cuda.DevicePtr(t.Offset)
	if int64(p)%int64(t.DType.Size()) != 0 {
		return 0, fmt.Errorf("cuda: %s %v at offset %d is not aligned to its %d-byte elements", what, t, t.Offset, t.DType.Size())
	}
	return p, nil
}

// Alloc returns a new zeroed device tensor (zeroed in stream order).
func (b *Backend) Alloc(dt dtype.DType, shape ...int) (kernels.Tensor, error) {
	if dt.Size() == 0 {
		return kernels.Tensor{}, fmt.Errorf("cuda: Alloc of dtype %s", dt)
	}
	n := int64(dt.Size())
	for _, d := range shape {
		if d < 0 {
			return kernels.Tensor{}, fmt.Errorf("cuda: Alloc of shape %v", shape)
		}
		n *= int64(d)
	}
	if err := b.enter(); err != nil {
		return kernels.Tensor{}, err
	}
	defer b.leave()
	buf, err := b.alloc(max(n, 1))
	if err != nil {
		return kernels.Tensor{}, err
	}
	buf.size = n
	if n > 0 {
		if err := cuda.MemsetD8Async(buf.ptr, 0, n, b.stream); err != nil {
			b.release(buf.ptr)
			return kernels.Tensor{}, err
		}
	}
	return kernels.Tensor{Buf: buf, DType: dt, Shape: append([]int(nil), shape...)}, nil
}

func (b *Backend) alloc(n int64) (*buffer, error) {
	p, err := b.pool.Alloc(n)
	if err != nil {
		return nil, err
	}
	return &buffer{ptr: p, size: n, owner: b, pooled: true}, nil
}

// release returns a pool block, or holds it for the graph being captured
// (a captured graph keeps using the memory its ops were recorded with).
func (b *Backend) release(p cuda.DevicePtr) {
	if b.sideOpen { // the other queue may still use it: free at Join
		b.deferred = append(b.deferred, p)
		return
	}
	if b.capturing {
		b.held = append(b.held, p)
		return
	}
	b.pool.Free(p)
}

// scratch allocates temporary device memory for one op; free it with
// release right after enqueuing the op (stream order keeps that safe).
func (b *Backend) scratch(n int64) (cuda.DevicePtr, error) {
	return b.pool.Alloc(max(n, 1))
}

// Free releases a tensor made by Alloc.
func (b *Backend) Free(t kernels.Tensor) {
	buf, ok := t.Buf.(*buffer)
	if !ok || buf.owner != b || !buf.pooled || buf.ptr == 0 {
		return
	}
	if err := b.enter(); err != nil {
		return
	}
	defer b.leave()
	b.release(buf.ptr)
	buf.ptr = 0
	buf.size = 0
}

func (b *Backend) stage() (*cuda.Staging, error) {
	if b.staging == nil {
		st, err := cuda.NewStaging(8, 8<<20)
		if err != nil {
			return nil, err
		}
		b.staging = st
	}
	return b.staging, nil
}

func (b *Backend) noCapture(op string) error {
	if b.capturing {
		return fmt.Errorf("cuda: %s during a graph capture (host copies cannot be replayed; do them before BeginCapture or after EndCapture)", op)
	}
	if b.sideOpen {
		return fmt.Errorf("cuda: %s between Side and Join", op)
	}
	return nil
}

// WrapHost uploads data once into a new device buffer (asynchronously,
// through pinned staging, in chunks) and returns it. The buffer lives until
// Close.
func (b *Backend) WrapHost(data []byte) (kernels.Buffer, error) {
	if len(data) == 0 {
		return nil, errors.New("cuda: WrapHost of no bytes")
	}
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	if err := b.noCapture("WrapHost"); err != nil {
		return nil, err
	}
	shift := dataShift(data)
	p, err := cuda.MemAlloc(int64(len(data)) + shift)
	if cuda.IsOutOfMemory(err) {
		if b.pool.Trim() == nil {
			p, err = cuda.MemAlloc(int64(len(data)) + shift)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cuda: WrapHost of %d MiB: %w", len(data)>>20, err)
	}
	st, err := b.stage()
	if err == nil {
		err = st.Upload(b.stream, p+cuda.DevicePtr(shift), data)
	}
	if err != nil {
		b.stream.Sync()
		cuda.MemFree(p)
		return nil, err
	}
	b.wrapped = append(b.wrapped, p)
	return &buffer{ptr: p + cuda.DevicePtr(shift), size: int64(len(data)), owner: b}, nil
}

// dataShift returns how far to place host bytes past a fresh (256-aligned)
// allocation so that, when they are a safetensors file, its data section
// starts 256-byte aligned. The format pads its header only to 8 bytes, so
// without the shift every tensor of a typical checkpoint sits 8 bytes off a
// 16-byte boundary and the vectorized kernels could not read it. Other
// bytes get no shift.
func dataShift(data []byte) int64 {
	if len(data) < 10 || data[8] != '{' {
		return 0
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > 100_000_000 || n+8 > uint64(len(data)) {
		return 0
	}
	return int64((256 - (n+8)%256) % 256)
}

// Upload copies host bytes into t.
func (b *Backend) Upload(t kernels.Tensor, src []byte) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	if err := b.noCapture("Upload"); err != nil {
		return err
	}
	p, err := b.dev(t, "Upload target")
	if err != nil {
		return err
	}
	if int64(len(src)) != t.Bytes() {
		return fmt.Errorf("cuda: Upload of %d bytes into %v (%d bytes)", len(src), t, t.Bytes())
	}
	if len(src) == 0 {
		return nil
	}
	st, err := b.stage()
	if err != nil {
		return err
	}
	return st.Upload(b.stream, p, src)
}

// Download copies t into host bytes after the work enqueued before it.
func (b *Backend) Download(dst []byte, t kernels.Tensor) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	if err := b.noCapture("Download"); err != nil {
		return err
	}
	p, err := b.dev(t, "Download source")
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Bytes() {
		return fmt.Errorf("cuda: Download of %v (%d bytes) into %d bytes", t, t.Bytes(), len(dst))
	}
	if len(dst) == 0 {
		return nil
	}
	st, err := b.stage()
	if err != nil {
		return err
	}
	return st.Download(b.stream, dst, p)
}

// Sync waits until every enqueued op has finished; it reports errors of
// kernels that failed on the device.
func (b *Backend) Sync() error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	if err := b.noCapture("Sync"); err != nil {
		return err
	}
	return b.stream.Sync()
}

// Close releases everything the backend holds.
func (b *Backend) Close() error {
	if err := b.enter(); err != nil {
		return nil // already closed
	}
	defer b.leave()
	var errs []error
	if b.capturing {
		if g, err := b.stream.EndCapture(); err == nil {
			g.Destroy()
		}
		b.capturing = false
	}
	if b.sideOpen { // an unjoined Side: wait for it, then free what it deferred
		b.stream, b.inSide = b.main, false
		errs = append(errs, b.side.Sync())
		b.sideOpen = false
		for _, p := range b.deferred {
			b.pool.Free(p)
		}
		b.deferred = nil
	}
	errs = append(errs, b.stream.Sync())
	if b.side != nil {
		errs = append(errs, b.side.Destroy(), b.forkEv.Destroy(), b.joinEv.Destroy())
	}
	if b.staging != nil {
		errs = append(errs, b.staging.Close())
	}
	for _, p := range b.wrapped {
		errs = append(errs, cuda.MemFree(p))
	}
	b.wrapped = nil
	for _, p := range b.held {
		b.pool.Free(p)
	}
	b.held = nil
	errs = append(errs, b.pool.Close())
	for _, m := range b.mods {
		errs = append(errs, m.Unload())
	}
	errs = append(errs, b.stream.Destroy())
	b.closed = true
	errs = append(errs, b.ctx.Close())
	return errors.Join(errs...)
}

// MemoryStats returns the bytes of pool memory in use and cached.
func (b *Backend) MemoryStats() (inUse, cached int64) { return b.pool.Stats() }

// KernelBuilds reports how many kernel modules were compiled with NVRTC and
// how many were read from the disk cache.
func (b *Backend) KernelBuilds() (compiled, cached int) { return b.compiles, b.cacheHits }

// PeakBandwidth is the device's theoretical DRAM bandwidth in bytes per
// second (memory clock × bus width), what decode throughput is compared with.
func (b *Backend) PeakBandwidth() float64 { return b.props.DRAMPeakGBs() * 1e9 }

// Device describes the GPU (name, architecture, memory, DRAM peak).
func (b *Backend) Device() string { return b.props.String() }
