// Package cpu is the pure-Go backend of gemmoe: the default everywhere and the
// numeric reference for the GPU backends.
//
// It keeps activations in float32 (ActivationDType is F32); BF16 and F16
// activation tensors are accepted too and converted on the way in and out.
// Weights may be dense (F32, F16, BF16) or MLX affine-quantized (2, 3, 4, 5,
// 6 or 8 bits; groups of 32, 64 or 128; scales and biases in BF16, F16 or
// F32). The generic matmuls and the attention accumulate in float64, which
// makes their results independent of the summation order to the f32
// rounding of the output.
//
// Kernels. Hot loops run in assembly where the CPU allows: on amd64, AVX2+FMA
// and AVX-512 kernel sets chosen at run time (golang.org/x/sys/cpu), for 4-
// and 8-bit quantized and bf16/f32 dense matmuls (one input row for decode,
// four at a time for prefill) and the attention's dot products; on arm64,
// NEON; everything else runs the generic Go kernels. GEMMOE_CPU_GENERIC=1 or
// WithGeneric forces the generic kernels, GEMMOE_CPU_KERNELS or WithKernels
// picks a set (KernelSets lists them). Every SIMD kernel does the same
// operations in the same order for a row whatever the batch, so a row's
// result does not depend on how many rows a call carries.
//
// With AVX2, AVX-512 or NEON, the 4- and 8-bit matmuls (groups of a
// multiple of 32, AVX-512 64; MLX's default is 64; on AVX2 the 4-bit ones
// take int24 activations instead by default, below) dequantize each weight to
// f32 (scale·q + bias, the value an f32 dequantization gives) and sum w·x in
// f32 lanes (the AVX-512 4-bit ones, groups of 64 or a multiple of 128, sum
// each group's exact q·x in f32 and add scale·Σq·x and bias·Σx): on x86 two
// to three times the throughput of summing in float64, which is what makes
// decode approach the memory bandwidth (the NEON kernels, tested under qemu,
// have not been timed). Their results differ from the exact sums by f32
// rounding (on the demo model the held-out perplexity is the same to four
// decimals). WithFloat64Sums or GEMMOE_CPU_F64=1 selects the float64 kernels
// instead, whose exact products summed in float64 agree with the generic
// kernels but for rare last-bit differences (NEON: bit for bit); the dense
// kernels always sum exact products in float64.
//
// Int24 activations. The 4-bit matmuls can also quantize each input row per
// block of 32 values to 24-bit integers with an f32 scale (2⁻²² of the
// block's largest value a step), held as three int8 digits, and multiply
// them with the int8 path's integer dot products, digit after digit: exact
// int32 sums a unit of 64 weights, then f32. Their results are as close to
// the exact sums as the f32 kernels' (the fixture logits within the same
// 1e-2, the routers' choices unchanged), at a third less work per weight on
// AVX2 (VPMADDUBSW): there they are the default, 35-45% faster than the
// f32 kernels on this project's benchmarks. With AVX-512 VNNI (VPDPBUSD)
// they were 16% faster than the f32 kernels from cache but no faster from
// memory, and slower in prefill (the f32 kernels share each weight's
// dequantization between four input rows), so the f32 kernels stay the
// default there. WithInt24Activations or GEMMOE_CPU_INT24=1/0 chooses.
//
// Int8 activations. WithInt8Activations(true) or GEMMOE_CPU_INT8=1 switches
// the 4- and 8-bit matmuls to llama.cpp-style integer dot products: each
// input row is quantized per block of 32 values to int8 with an f32 scale,
// and VPDPBUSD (AVX-512 VNNI) or VPMADDUBSW/VPMADDWD (AVX2) sum q·x exactly
// in int32, several times less work per weight byte than the exact kernels,
// so that decode runs at the memory bandwidth. The cost is a deviation: on
// the demo model (tools/demo) the held-out perplexity moves by about +0.25%
// (9.358 → 9.380 over 106 windows); on the random-weight fixtures, whose
// routers are nearly uniform, it changes the top-k experts of many tokens,
// so their logits are not comparable to the reference. It is therefore not
// the default.
//
// Ops run immediately on the calling goroutine and a pool of worker goroutines
// (GOMAXPROCS of them unless WithThreads says otherwise) that lives until
// Close. A Backend is used by one goroutine at a time, as the kernels contract
// says. Every op validates its arguments (dtypes, shapes, tensors inside their
// buffers, ids in range) and returns an error instead of panicking.
//
// The backend assumes a little-endian machine (amd64, arm64), as do the
// safetensors files it reads.
package cpu

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// errClosed is returned by every method after Close.
var errClosed = errors.New("cpu: backend is closed")

// Option configures a Backend made by New.
type Option func(*config)

type config struct {
	threads  int
	generic  bool
	kernels  string
	int8     bool
	int8Set  bool
	int24    bool
	int24Set bool
	f64      bool
	f64Set   bool
}

// WithThreads sets the number of goroutines that execute an op (the caller
// included). n <= 0 means runtime.GOMAXPROCS(0), the default.
func WithThreads(n int) Option { return func(c *config) { c.threads = n } }

// WithGeneric makes the backend run the generic Go kernels only, as the
// environment variable GEMMOE_CPU_GENERIC=1 does. By default the backend
// uses the best SIMD kernels the CPU supports (see KernelSets).
func WithGeneric() Option { return func(c *config) { c.generic = true } }

// WithInt8Activations makes the matmuls with 4- and 8-bit weights quantize
// their input rows to int8 (per block of 32 values, with an f32 scale) and
// use integer dot products, as llama.cpp does: several times less work per
// weight byte than the exact kernels, so decode runs at the memory
// bandwidth, at the cost of a small deviation (see the package
// documentation). The environment variable GEMMOE_CPU_INT8=1 does the same;
// GEMMOE_CPU_INT8=0 forces the exact kernels. It has no effect with the
// generic kernels.
func WithInt8Activations(on bool) Option { return func(c *config) { c.int8, c.int8Set = on, true } }

// WithInt24Activations(false) makes the 4-bit matmuls dequantize to f32
// and sum in f32 where the kernel set also has int24-activation kernels
// (AVX2 and AVX-512), which are otherwise the default there: each input row
// quantized per block of 32 values to 24-bit integers with an f32 scale,
// held as three int8 digits, and multiplied by the 4-bit weights with the
// integer dot products of the int8 path, a third less work per weight than
// dequantizing to f32 and as close to the exact sums (see the package
// documentation). The environment variable GEMMOE_CPU_INT24=0 does the same.
// WithInt8Activations and WithFloat64Sums take precedence.
func WithInt24Activations(on bool) Option { return func(c *config) { c.int24, c.int24Set = on, true } }

// WithFloat64Sums makes the 4- and 8-bit matmuls run the SIMD kernels that
// sum exact products in float64 (as the generic kernels do: their results
// agree but for rare last-bit differences) instead of the default ones that
// dequantize to f32 and sum in f32 (two to three times as fast per weight;
// within ~(K/32 + 10)·2⁻²⁴·Σ|w·x| of the exact sum). The environment
// variable GEMMOE_CPU_F64=1 does the same. The f32 kernels exist for AVX2
// and NEON (groups of a multiple of 32) and AVX-512 (of 64); everything else
// runs the float64 kernels either way.
func WithFloat64Sums(on bool) Option { return func(c *config) { c.f64, c.f64Set = on, true } }

// WithKernels selects a kernel set by name (one of KernelSets, or
// "generic"); a set the CPU lacks falls back to the best available. The
// environment variable GEMMOE_CPU_KERNELS does the same.
func WithKernels(name string) Option { return func(c *config) { c.kernels = name } }

// Backend is the pure-Go implementation of kernels.Backend. Make one with New
// and release it with Close.
type Backend struct {
	pool   *pool
	closed bool
	ks     *kernelSet // SIMD kernels; nil: generic Go
	int8   bool       // int8-activation matmuls (with ks)
	int24  bool       // int24-activation 4-bit matmuls (with ks)
	f64    bool       // quantized SIMD matmuls sum in float64 (not f32)

	// scratch for dtype conversions of op arguments (slot-indexed) and for the
	// per-call tables of the matmuls; grown on demand, reused across calls.
	conv [numConvSlots][]float32
	x64  []float64 // matmul input rows, widened
	xf   []float64 // matmul input rows as the SIMD kernels read them
	xf32 []float32 // matmul input rows as the f32 SIMD kernels read them (4-bit)
	xq   []uint64  // matmul input rows quantized for the int8 kernels (bytes)
	bsum []float64 // per-block sums of an input row (int8 kernels)
	xsum []float64 // per-group sums of x for the fused quantized products
	mm   mmJob     // the one matmul job (no allocation per call)
	ew   elemJob   // the one elementwise job
	at   attnJob   // the one attention job
	ws   []workerScratch
	// MatMulExperts grouping by expert (M > 1).
	expCount []int32
	expStart []int32
	expOrder []int32
	expUsed  []int32
}

// workerScratch is the private scratch of one worker of the pool.
type workerScratch struct {
	gsum   []float64  // per-group Σq·x of one row
	sc, bi []float32  // a row's scales and biases (and small f32 scratch)
	q      []float32  // one unpacked row
	row    []float64  // a block of expanded weight rows
	acc64  []float64  // the block's sums per input row
	score  []float32  // attention scores, router probabilities
	acc    []float64  // attention output accumulator
	q64    []float64  // attention: four queries widened to float64
	dots   [4]float64 // attention: the four queries' dots, or their weights
	ka     kargs      // SIMD matmul kernel arguments
	sb32   []float32  // SIMD matmul: f32 scales and biases of a block of rows
	tmp    []float32  // SIMD softcap: a block of inputs
}

// New returns a CPU backend with its worker pool started.
func New(opts ...Option) *Backend {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.threads <= 0 {
		c.threads = runtime.GOMAXPROCS(0)
	}
	b := &Backend{pool: newPool(c.threads), ks: chooseKernels(c.generic, c.kernels)}
	if !c.int8Set {
		c.int8 = defaultInt8()
	}
	b.int8 = c.int8 && b.ks != nil
	if !c.f64Set {
		c.f64 = defaultFloat64Sums()
	}
	b.f64 = c.f64
	if !c.int24Set {
		c.int24 = defaultInt24(b.ks)
	}
	b.int24 = c.int24 && b.ks != nil && b.ks.d4[0] != nil && !b.int8 && !b.f64
	b.ws = make([]workerScratch, c.threads)
	return b
}

// Threads returns the number of goroutines that execute an op.
func (b *Backend) Threads() int { return b.pool.n }

// Name returns "cpu".
func (b *Backend) Name() string { return "cpu" }

// ActivationDType returns F32: the CPU backend keeps activations in float32.
func (b *Backend) ActivationDType() dtype.DType { return dtype.F32 }

// buffer is the CPU backend's device memory: host bytes.
type buffer struct {
	data     []byte
	backing  []uint64 // keeps Alloc'd memory (8-byte aligned) alive
	readOnly bool     // WrapHost buffers
	freed    bool
}

// Len is the buffer's size in bytes (0 once freed).
func (u *buffer) Len() int64 { return int64(len(u.data)) }

// Alloc returns a new zeroed tensor of the given dtype and shape. The memory is
// 8-byte aligned.
func (b *Backend) Alloc(dt dtype.DType, shape ...int) (kernels.Tensor, error) {
	if b.closed {
		return kernels.Tensor{}, errClosed
	}
	if dt.Size() == 0 {
		return kernels.Tensor{}, fmt.Errorf("cpu: Alloc of invalid dtype %s", dt)
	}
	n, err := numel(shape)
	if err != nil {
		return kernels.Tensor{}, fmt.Errorf("cpu: Alloc: %w", err)
	}
	size := n * int64(dt.Size())
	if size > 1<<46 {
		return kernels.Tensor{}, fmt.Errorf("cpu: Alloc of %d bytes is too large", size)
	}
	words := make([]uint64, (size+7)/8)
	var data []byte
	if len(words) > 0 {
		data = unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), size)
	} else {
		data = []byte{}
	}
	return kernels.Tensor{
		Buf:   &buffer{data: data, backing: words},
		DType: dt,
		Shape: append([]int(nil), shape...),
	}, nil
}

// Free releases the buffer under t if Alloc made it; every view of it becomes
// invalid (ops on them return errors). Freeing a wrapped or foreign buffer, or
// freeing twice, does nothing.
func (b *Backend) Free(t kernels.Tensor) {
	u, ok := t.Buf.(*buffer)
	if !ok || u.readOnly {
		return
	}
	u.data, u.backing, u.freed = nil, nil, true
}

// WrapHost returns a read-only buffer over data without copying it. data must
// stay valid and unchanged until Close.
func (b *Backend) WrapHost(data []byte) (kernels.Buffer, error) {
	if b.closed {
		return nil, errClosed
	}
	if data == nil {
		data = []byte{}
	}
	return &buffer{data: data, readOnly: true}, nil
}

// Upload copies src into t.
func (b *Backend) Upload(t kernels.Tensor, src []byte) error {
	if b.closed {
		return errClosed
	}
	dst, err := b.raw(t, "Upload: tensor", true)
	if err != nil {
		return err
	}
	if len(src) != len(dst) {
		return fmt.Errorf("cpu: Upload of %d bytes into %s (%d bytes)", len(src), t, len(dst))
	}
	copy(dst, src)
	return nil
}

// Download copies t into dst.
func (b *Backend) Download(dst []byte, t kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	src, err := b.raw(t, "Download: tensor", false)
	if err != nil {
		return err
	}
	if len(src) != len(dst) {
		return fmt.Errorf("cpu: Download of %s (%d bytes) into %d bytes", t, len(src), len(dst))
	}
	copy(dst, src)
	return nil
}

// Sync returns at once: the CPU backend executes each op when it is called.
func (b *Backend) Sync() error {
	if b.closed {
		return errClosed
	}
	return nil
}

// Close stops the worker pool. Later calls return errors; Close is idempotent.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.pool.close()
	for i := range b.conv {
		b.conv[i] = nil
	}
	b.ws, b.xsum, b.x64, b.xf, b.xf32 = nil, nil, nil, nil, nil
	return nil
}

var _ kernels.Backend = (*Backend)(nil)

// numel returns the product of shape, checking for negative dimensions and
// overflow.
func numel(shape []int) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > (1<<53)/int64(d) {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// raw returns the bytes of t after checking that t is a live tensor of this
// backend lying inside its buffer (and writable when write is set). what
// names the argument in errors.
func (b *Backend) raw(t kernels.Tensor, what string, write bool) ([]byte, error) {
	if t.Buf == nil {
		return nil, fmt.Errorf("cpu: %s is missing (zero tensor)", what)
	}
	u, ok := t.Buf.(*buffer)
	if !ok {
		return nil, fmt.Errorf("cpu: %s lives in a %T buffer, not a cpu one", what, t.Buf)
	}
	if u.freed {
		return nil, fmt.Errorf("cpu: %s %s uses a freed buffer", what, t)
	}
	if write && u.readOnly {
		return nil, fmt.Errorf("cpu: %s %s is in a read-only (WrapHost) buffer", what, t)
	}
	if t.DType.Size() == 0 {
		return nil, fmt.Errorf("cpu: %s has invalid dtype %s", what, t.DType)
	}
	n, err := numel(t.Shape)
	if err != nil {
		return nil, fmt.Errorf("cpu: %s: %w", what, err)
	}
	size := n * int64(t.DType.Size())
	if t.Offset < 0 || t.Offset > int64(len(u.data)) || size > int64(len(u.data))-t.Offset {
		return nil, fmt.Errorf("cpu: %s %s at offset %d (%d bytes) lies outside its %d-byte buffer",
			what, t, t.Offset, size, len(u.data))
	}
	return u.data[t.Offset : t.Offset+size : t.Offset+size], nil
}

// rawRange returns bytes [off, off+size) of t's buffer after the same checks as
// raw (used for 3D weights, whose experts lie beyond the first one's view).
func rawRange(t kernels.Tensor, what string, off, size int64) ([]byte, error) {
	u, ok := t.Buf.(*buffer)
	if !ok || u.freed {
		return nil, fmt.Errorf("cpu: %s is not a live cpu tensor", what)
	}
	if off < 0 || off > int64(len(u.data)) || size < 0 || size > int64(len(u.data))-off {
		return nil, fmt.Errorf("cpu: %s: bytes [%d, %d) lie outside its %d-byte buffer", what, off, off+size, len(u.data))
	}
	return u.data[off : off+size : off+size], nil
}

// Typed views over raw bytes. The CPU targets (amd64, arm64) allow unaligned
// loads, and the element types hold no pointers, so views at any offset are
// valid.

func asF32(p []byte) []float32 {
	if len(p) < 4 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&p[0])), len(p)/4)
}

func asU32(p []byte) []uint32 {
	if len(p) < 4 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(&p[0])), len(p)/4)
}

func asI32(p []byte) []int32 {
	if len(p) < 4 {
		return nil
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(&p[0])), len(p)/4)
}

func asU16(p []byte) []uint16 {
	if len(p) < 2 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&p[0])), len(p)/2)
}

// Conversion scratch slots: an op that converts several arguments uses a
// different slot for each.
const (
	slotX = iota
	slotY
	slotA
	slotB
	slotW
	numConvSlots
)

// grow returns s resized to n elements, reallocating only when it is too small.
func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n, n+n/4)
	}
	return s[:n]
}

// growAligned is grow for a slice whose first element is 64-byte aligned
// (a cache line: the AVX-512 kernels' loads of the input then never span
// two lines).
func growAligned(s []float32, n int) []float32 {
	if cap(s) < n || uintptr(unsafe.Pointer(unsafe.SliceData(s)))%64 != 0 {
		b := make([]float32, n+n/4+16)
		off := int((64 - uintptr(unsafe.Pointer(&b[0]))%64) % 64 / 4)
		return b[off : off+n : off+n+n/4]
	}
	return s[:n]
}

// grow64 is grow for float64 slices.
func grow64(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n, n+n/4)
	}
	return s[:n]
}

// in returns t's elements as float32: a view for F32, else a converted copy in
// conversion slot. t must be a float tensor.
func (b *Backend) in(t kernels.Tensor, what string, slot int) ([]float32, error) {
	p, err := b.raw(t, what, false)
	if err != nil {
		return nil, err
	}
	switch t.DType {
	case dtype.F32:
		return asF32(p), nil
	case dtype.BF16, dtype.F16:
		v := asU16(p)
		b.conv[slot] = grow(b.conv[slot], len(v))
		dst := b.conv[slot]
		if t.DType == dtype.BF16 {
			bf16ToF32(dst, v)
		} else {
			f16ToF32(dst, v)
		}
		return dst, nil
	}
	return nil, fmt.Errorf("cpu: %s %s must be F32, BF16 or F16", what, t)
}

// out returns the float32 destination for writing t: a view for F32, else a
// scratch slice to be converted into t by flush.
func (b *Backend) out(t kernels.Tensor, what string, slot int) ([]float32, error) {
	p, err := b.raw(t, what, true)
	if err != nil {
		return nil, err
	}
	switch t.DType {
	case dtype.F32:
		return asF32(p), nil
	case dtype.BF16, dtype.F16:
		b.conv[slot] = grow(b.conv[slot], len(p)/2)
		return b.conv[slot], nil
	}
	return nil, fmt.Errorf("cpu: %s %s must be F32, BF16 or F16", what, t)
}

// flush converts v (from out) into t when t is not F32.
func (b *Backend) flush(t kernels.Tensor, v []float32) {
	if t.DType == dtype.F32 {
		return
	}
	p, _ := b.raw(t, "", true) // checked by out
	dst := asU16(p)
	if t.DType == dtype.BF16 {
		for i, f := range v[:len(dst)] {
			dst[i] = dtype.F32ToBF16(f)
		}
	} else {
		for i, f := range v[:len(dst)] {
			dst[i] = dtype.F32ToF16(f)
		}
	}
}

// ints returns the I32 tensor t as []int32.
func (b *Backend) ints(t kernels.Tensor, what string) ([]int32, error) {
	if t.Buf != nil && t.DType != dtype.I32 {
		return nil, fmt.Errorf("cpu: %s %s must be I32", what, t)
	}
	p, err := b.raw(t, what, false)
	if err != nil {
		return nil, err
	}
	return asI32(p), nil
}

func bf16ToF32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = bf16(h)
	}
}

func f16ToF32(dst []float32, src []uint16) {
	tab := f16Table()
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = tab[h]
	}
}

// bf16 widens a bfloat16 bit pattern (inlined in hot loops).
func bf16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

var (
	f16Once sync.Once
	f16Tab  *[1 << 16]float32
)

// f16Table returns the float32 value of every IEEE half bit pattern.
func f16Table() *[1 << 16]float32 {
	f16Once.Do(func() {
		t := new([1 << 16]float32)
		for i := range t {
			t[i] = dtype.F16ToF32(uint16(i))
		}
		f16Tab = t
	})
	return f16Tab
}
