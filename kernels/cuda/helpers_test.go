package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
)

// Backends shared by the tests of this package (kernel modules compile once).
var (
	gpuOnce sync.Once
	gpuF32  *Backend
	gpuBF16 *Backend
	// gpuBF16TC has bf16 activations and runs every matrix-vector product
	// it can on the tensor-core kernel (qmvt), small ones included.
	gpuBF16TC *Backend
	gpuErr    error
	cpuBE     *cpu.Backend
)

func TestMain(m *testing.M) {
	code := m.Run()
	if gpuF32 != nil {
		gpuF32.Close()
		gpuBF16.Close()
		gpuBF16TC.Close()
	}
	os.Exit(code)
}

// gpus returns backends with F32 and BF16 activations, or skips the test.
func gpus(t testing.TB) (*Backend, *Backend) {
	t.Helper()
	gpuOnce.Do(func() {
		gpuF32, gpuErr = New(WithActivationDType(dtype.F32))
		if gpuErr == nil {
			gpuBF16, gpuErr = New()
		}
		if gpuErr == nil {
			gpuBF16TC, gpuErr = New()
		}
		if gpuErr == nil {
			gpuBF16TC.mvKernel = mvTC
		}
		cpuBE = cpu.New()
	})
	if gpuErr != nil {
		t.Skipf("no CUDA driver: %v", gpuErr)
	}
	return gpuF32, gpuBF16
}

// backendsUnderTest lists the backends an op is checked on: CUDA with f32 and
// bf16 activations and the CPU backend (f32), each with its tolerance for
// the error relative to the largest reference value.
type beCase struct {
	name string
	be   kernels.Backend
	act  dtype.DType
	tol  float64
}

func backends(t testing.TB, tolF32, tolBF16 float64) []beCase {
	f32, bf := gpus(t)
	return []beCase{
		{"cuda-f32", f32, dtype.F32, tolF32},
		{"cuda-bf16", bf, dtype.BF16, tolBF16},
		{"cpu", cpuBE, dtype.F32, tolF32},
	}
}

// round returns v as it reads back from a tensor of type dt.
func round(v float32, dt dtype.DType) float32 {
	switch dt {
	case dtype.BF16:
		return dtype.BF16ToF32(dtype.F32ToBF16(v))
	case dtype.F16:
		return dtype.F16ToF32(dtype.F32ToF16(v))
	}
	return v
}

func roundAll(v []float32, dt dtype.DType) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = round(x, dt)
	}
	return out
}

func encode(v []float32, dt dtype.DType) []byte {
	b := make([]byte, len(v)*dt.Size())
	for i, x := range v {
		switch dt {
		case dtype.F32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToBF16(x))
		case dtype.F16:
			binary.LittleEndian.PutUint16(b[2*i:], dtype.F32ToF16(x))
		default:
			panic("encode " + dt.String())
		}
	}
	return b
}

func decode(b []byte, dt dtype.DType) []float32 {
	n := len(b) / dt.Size()
	out := make([]float32, n)
	for i := range out {
		switch dt {
		case dtype.F32:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		case dtype.BF16:
			out[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		case dtype.F16:
			out[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	}
	return out
}

func i32bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

func u32bytes(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// put allocates a tensor of type dt and uploads v.
func put(t testing.TB, be kernels.Backend, dt dtype.DType, v []float32, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := be.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Upload(x, encode(v, dt)); err != nil {
		t.Fatal(err)
	}
	return x
}

func putRaw(t testing.TB, be kernels.Backend, dt dtype.DType, raw []byte, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := be.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Upload(x, raw); err != nil {
		t.Fatal(err)
	}
	return x
}

// poisoned allocates an output tensor filled with NaN, so unwritten elements show.
func poisoned(t testing.TB, be kernels.Backend, dt dtype.DType, shape ...int) kernels.Tensor {
	t.Helper()
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return put(t, be, dt, v, shape...)
}

func get(t testing.TB, be kernels.Backend, x kernels.Tensor) []float32 {
	t.Helper()
	b := make([]byte, x.Bytes())
	if err := be.Download(b, x); err != nil {
		t.Fatal(err)
	}
	if x.DType == dtype.I32 {
		out := make([]float32, x.Numel())
		for i := range out {
			out[i] = float32(int32(binary.LittleEndian.Uint32(b[4*i:])))
		}
		return out
	}
	return decode(b, x.DType)
}

func randn(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64()) * scale
	}
	return v
}

// relErr returns max|got-want| / max|want| (NaN in got counts as infinite).
func relErr(got []float32, want []float64) float64 {
	var maxd, maxw float64
	for i, w := range want {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		maxd = max(maxd, math.Abs(g-w))
		maxw = max(maxw, math.Abs(w))
	}
	if maxw == 0 {
		return maxd
	}
	return maxd / maxw
}

// errStats collects the largest relative error seen per backend and op, for
// the summary that TestZZTolerances prints.
var (
	statsMu sync.Mutex
	stats   = map[string]float64{}
)

func record(op, be string, e float64) {
	statsMu.Lock()
	defer statsMu.Unlock()
	k := op + " / " + be
	stats[k] = max(stats[k], e)
}

// check compares got with want within tol and records the error.
func check(t testing.TB, op string, c beCase, got []float32, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s on %s: %d values, want %d", op, c.name, len(got), len(want))
	}
	e := relErr(got, want)
	record(strings.SplitN(op, " ", 2)[0], c.name, e)
	if !(e <= c.tol) {
		i := worst(got, want)
		t.Errorf("%s on %s: relative error %.3g > %.3g (worst at %d: got %v want %v)", op, c.name, e, c.tol, i, got[i], want[i])
	}
}

func worst(got []float32, want []float64) int {
	wi, wd := 0, -1.0
	for i := range want {
		d := math.Abs(float64(got[i]) - want[i])
		if math.IsNaN(d) {
			return i
		}
		if d > wd {
			wi, wd = i, d
		}
	}
	return wi
}

// qweight is a random MLX affine-quantized weight [E?, N, K] on the host.
type qweight struct {
	bits, group, n, k, experts int
	q                          [][]uint32 // [e·n][k] values
	s, b                       []float32  // [e·n·k/group], already rounded to sdt
	sdt                        dtype.DType
	words                      []uint32
}

func newQWeight(r *rand.Rand, experts, n, k, bits, group int, sdt dtype.DType) *qweight {
	e := max(experts, 1)
	w := &qweight{bits: bits, group: group, n: n, k: k, experts: experts, sdt: sdt}
	rows := e * n
	w.q = make([][]uint32, rows)
	for i := range w.q {
		w.q[i] = make([]uint32, k)
		for j := range w.q[i] {
			w.q[i][j] = uint32(r.IntN(1 << bits))
		}
	}
	ng := rows * k / group
	w.s, w.b = make([]float32, ng), make([]float32, ng)
	for i := range w.s {
		// scales may be negative and biases anywhere (DESIGN §5)
		w.s[i] = round(float32(r.NormFloat64())*0.02, sdt)
		w.b[i] = round(float32(r.NormFloat64())*0.05, sdt)
	}
	wpr := k * bits / 32
	w.words = make([]uint32, rows*wpr)
	for i := range rows {
		for j := range k {
			bit := j * bits
			v := uint64(w.q[i][j]) << (bit % 32)
			w.words[i*wpr+bit/32] |= uint32(v)
			if bit%32+bits > 32 {
				w.words[i*wpr+bit/32+1] |= uint32(v >> 32)
			}
		}
	}
	return w
}

// at returns the dequantized element of expert e, row n, column k.
func (w *qweight) at(e, n, k int) float64 {
	row := e*w.n + n
	g := row*(w.k/w.group) + k/w.group
	return float64(w.s[g])*float64(w.q[row][k]) + float64(w.b[g])
}

// upload makes a kernels.Weight on be (through WrapHost when wrap is set,
// with the data at byteOff inside the buffer to exercise unaligned paths).
func (w *qweight) upload(t testing.TB, be kernels.Backend, wrap bool, byteOff int) *kernels.Weight {
	t.Helper()
	e := max(w.experts, 1)
	data := u32bytes(w.words)
	sc, bi := encode(w.s, w.sdt), encode(w.b, w.sdt)
	kw := &kernels.Weight{Bits: w.bits, Group: w.group, N: w.n, K: w.k, Experts: w.experts}
	if wrap {
		blob := make([]byte, byteOff, byteOff+len(data)+len(sc)+len(bi)+16)
		blob = append(blob, data...)
		so := len(blob)
		blob = append(blob, sc...)
		bo := len(blob)
		blob = append(blob, bi...)
		buf, err := be.WrapHost(blob)
		if err != nil {
			t.Fatal(err)
		}
		kw.Data = kernels.Tensor{Buf: buf, Offset: int64(byteOff), DType: dtype.U32, Shape: []int{w.n, w.k * w.bits / 32}}
		kw.Scales = kernels.Tensor{Buf: buf, Offset: int64(so), DType: w.sdt, Shape: []int{w.n, w.k / w.group}}
		kw.Biases = kernels.Tensor{Buf: buf, Offset: int64(bo), DType: w.sdt, Shape: []int{w.n, w.k / w.group}}
	} else {
		kw.Data = putRaw(t, be, dtype.U32, data, e*w.n, w.k*w.bits/32)
		kw.Scales = putRaw(t, be, w.sdt, sc, e*w.n, w.k/w.group)
		kw.Biases = putRaw(t, be, w.sdt, bi, e*w.n, w.k/w.group)
		kw.Data.Shape = []int{w.n, w.k * w.bits / 32}
		kw.Scales.Shape = []int{w.n, w.k / w.group}
		kw.Biases.Shape = []int{w.n, w.k / w.group}
	}
	if w.experts > 0 {
		kw.DataStride = int64(w.n * w.k * w.bits / 8)
		kw.GroupStride = int64(w.n * w.k / w.group * w.sdt.Size())
	}
	if err := kw.Validate(); err != nil {
		t.Fatal(err)
	}
	return kw
}

// dweight is a random dense weight [E?, N, K].
type dweight struct {
	n, k, experts int
	dt            dtype.DType
	v             []float32 // rounded to dt
}

func newDWeight(r *rand.Rand, experts, n, k int, dt dtype.DType) *dweight {
	e := max(experts, 1)
	return &dweight{n: n, k: k, experts: experts, dt: dt, v: roundAll(randn(r, e*n*k, 0.05), dt)}
}

func (w *dweight) at(e, n, k int) float64 { return float64(w.v[(e*w.n+n)*w.k+k]) }

func (w *dweight) upload(t testing.TB, be kernels.Backend) *kernels.Weight {
	t.Helper()
	e := max(w.experts, 1)
	d := put(t, be, w.dt, w.v, e*w.n, w.k)
	d.Shape = []int{w.n, w.k}
	kw := &kernels.Weight{Data: d, N: w.n, K: w.k, Experts: w.experts}
	if w.experts > 0 {
		kw.DataStride = int64(w.n * w.k * w.dt.Size())
	}
	return kw
}

func name(parts ...any) string { return strings.Trim(fmt.Sprint(parts...), "[]") }
