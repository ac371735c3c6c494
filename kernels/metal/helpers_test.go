package metal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	mtl "github.com/gemmoe/gemmoe/metal"
)

// Test helpers: host encodings, random inputs, MLX-quantized weights packed
// bit by bit, and the plain scalar references (float64 loops written from the
// contract, independent of the kernels).

var (
	sharedOnce  sync.Once
	sharedEmu   *Backend
	sharedErr   error
	metalOnce   sync.Once
	sharedMetal *Backend
	metalErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedEmu != nil {
		sharedEmu.Close()
	}
	if sharedMetal != nil {
		sharedMetal.Close()
	}
	os.Exit(code)
}

// emulatedOrNil returns the emulated backend shared by the tests of this
// binary (the runner is built once), or nil where there is no C++ compiler.
func emulatedOrNil(t testing.TB) *Backend {
	t.Helper()
	sharedOnce.Do(func() { sharedEmu, sharedErr = NewEmulated() })
	if errors.Is(sharedErr, ErrNoCompiler) {
		return nil
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedEmu
}

// emulated returns the shared emulated backend, skipping the test where
// there is no C++ compiler.
func emulated(t testing.TB) *Backend {
	t.Helper()
	b := emulatedOrNil(t)
	if b == nil {
		t.Skipf("no C++ compiler, the MSL kernels cannot be emulated: %v", sharedErr)
	}
	return b
}

// metalOrNil returns the real Metal backend on an Apple Silicon Mac, nil
// elsewhere. A Mac where Metal fails to start fails the test.
func metalOrNil(t testing.TB) *Backend {
	t.Helper()
	metalOnce.Do(func() { sharedMetal, metalErr = New() })
	if errors.Is(metalErr, mtl.ErrUnavailable) {
		return nil
	}
	if metalErr != nil {
		t.Fatal(metalErr)
	}
	return sharedMetal
}

// env is a backend under test with the dtype it keeps activations in.
type env struct {
	name string
	b    kernels.Backend
	act  dtype.DType
}

// gpus returns the Metal backends available here: the real one on an Apple
// Silicon Mac, the emulated one where g++ is. It skips the test if none.
func gpus(t testing.TB) []env {
	t.Helper()
	var out []env
	if b := metalOrNil(t); b != nil {
		out = append(out, env{"metal", b, dtype.BF16})
	}
	if b := emulatedOrNil(t); b != nil {
		out = append(out, env{"metal-emulated", b, dtype.BF16})
	}
	if len(out) == 0 {
		t.Skipf("neither Metal nor a C++ compiler for the emulator: %v", sharedErr)
	}
	return out
}

// envs returns the Metal backends of gpus followed by the CPU backend (f32
// activations, last); the op tests run them side by side.
func envs(t testing.TB) []env {
	t.Helper()
	out := gpus(t)
	c := cpu.New(cpu.WithThreads(1))
	t.Cleanup(func() { c.Close() })
	return append(out, env{"cpu", c, dtype.F32})
}

func encode(dt dtype.DType, vals []float64) []byte {
	out := make([]byte, len(vals)*dt.Size())
	for i, v := range vals {
		switch dt {
		case dtype.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(v)))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(out[2*i:], dtype.F32ToBF16(float32(v)))
		case dtype.F16:
			binary.LittleEndian.PutUint16(out[2*i:], dtype.F32ToF16(float32(v)))
		case dtype.I32:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(int32(v)))
		case dtype.U32:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(v))
		}
	}
	return out
}

func decode(dt dtype.DType, raw []byte) []float64 {
	out := make([]float64, len(raw)/dt.Size())
	for i := range out {
		switch dt {
		case dtype.F32:
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		case dtype.BF16:
			out[i] = float64(dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:])))
		case dtype.F16:
			out[i] = float64(dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:])))
		case dtype.I32:
			out[i] = float64(int32(binary.LittleEndian.Uint32(raw[4*i:])))
		case dtype.U32:
			out[i] = float64(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	}
	return out
}

// rounded returns vals as stored in dt.
func rounded(dt dtype.DType, vals []float64) []float64 { return decode(dt, encode(dt, vals)) }

// randVals returns n values uniform in [-a, a), rounded to bf16 so that every
// backend sees the same inputs whatever dtype it stores them in.
func randVals(r *rand.Rand, n int, a float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = (2*r.Float64() - 1) * a
	}
	return rounded(dtype.BF16, v)
}

func (e env) put(t testing.TB, dt dtype.DType, vals []float64, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := e.b.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if vals != nil {
		if err := e.b.Upload(x, encode(dt, vals)); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

func (e env) putRaw(t testing.TB, dt dtype.DType, raw []byte, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := e.b.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.Upload(x, raw); err != nil {
		t.Fatal(err)
	}
	return x
}

func (e env) get(t testing.TB, x kernels.Tensor) []float64 {
	t.Helper()
	raw := make([]byte, x.Bytes())
	if err := e.b.Download(raw, x); err != nil {
		t.Fatal(err)
	}
	return decode(x.DType, raw)
}

// tol is a comparison tolerance: |got-want| ≤ abs + rel·|want| + mag·magScale.
type tol struct {
	rel, abs, mag float64
}

// outTol is the tolerance for outputs stored in dt after f32 arithmetic.
func outTol(dt dtype.DType) tol {
	switch dt {
	case dtype.BF16:
		return tol{rel: 1.0 / 128, abs: 1e-6, mag: 1.0 / 256}
	case dtype.F16:
		return tol{rel: 1.0 / 1024, abs: 1e-6, mag: 1.0 / 2048}
	}
	return tol{rel: 2e-5, abs: 1e-6, mag: 2e-6}
}

// compare checks got against want; mag[i] (optional) is the magnitude of the
// terms that produced want[i] (e.g. Σ|x·w|), which bounds cancellation error.
func compare(t testing.TB, what string, got, want, mag []float64, tl tol) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	bad := 0
	worst, wi := 0.0, 0
	for i := range want {
		m := 0.0
		if mag != nil {
			m = mag[i]
		}
		lim := tl.abs + tl.rel*math.Abs(want[i]) + tl.mag*m
		d := math.Abs(got[i] - want[i])
		if !(d <= lim) {
			if bad < 5 {
				t.Errorf("%s[%d] = %.7g, want %.7g (diff %.3g > %.3g)", what, i, got[i], want[i], d, lim)
			}
			bad++
		}
		if d > worst || math.IsNaN(d) {
			worst, wi = d, i
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values out of tolerance (worst at %d)", what, bad, len(want), wi)
	}
}

// hostWeight is a weight on the host: [E?, N, K], dense or MLX-quantized.
type hostWeight struct {
	n, k, experts int
	bits, group   int
	wdt, sdt      dtype.DType // dense data dtype; scales/biases dtype
	q             []uint32    // quantized values [E·N·K]
	scales        []float64   // [E·N·K/g] (rounded to sdt)
	biases        []float64
	dense         []float64 // dense values [E·N·K] (rounded to wdt)
}

// newQuant returns a random quantized weight with scales of either sign and
// biases that are not the row minimum.
func newQuant(r *rand.Rand, experts, n, k, bits, group int, sdt dtype.DType) *hostWeight {
	e := max(experts, 1)
	w := &hostWeight{n: n, k: k, experts: experts, bits: bits, group: group, sdt: sdt}
	w.q = make([]uint32, e*n*k)
	for i := range w.q {
		w.q[i] = uint32(r.IntN(1 << bits))
	}
	g := e * n * k / group
	w.scales = make([]float64, g)
	w.biases = make([]float64, g)
	for i := range g {
		s := (0.5 + r.Float64()) / float64(int(1)<<bits) * 0.2
		if r.IntN(4) == 0 {
			s = -s
		}
		w.scales[i] = s
		w.biases[i] = (2*r.Float64() - 1) * 0.1
	}
	w.scales = rounded(sdt, w.scales)
	w.biases = rounded(sdt, w.biases)
	return w
}

// newDense returns a random dense weight stored in wdt.
func newDense(r *rand.Rand, experts, n, k int, wdt dtype.DType) *hostWeight {
	e := max(experts, 1)
	return &hostWeight{n: n, k: k, experts: experts, wdt: wdt, dense: randVals(r, e*n*k, 0.2)}
}

// packed returns the MLX bit stream of all rows: element i of a row occupies
// bits [i·bits, (i+1)·bits), stream bit p is bit p%32 of word p/32.
func (w *hostWeight) packed() []byte {
	rows := len(w.q) / w.k
	words := make([]uint32, rows*w.k*w.bits/32)
	per := w.k * w.bits / 32
	for r := range rows {
		for i := range w.k {
			v := w.q[r*w.k+i]
			for j := range w.bits {
				if v>>j&1 == 1 {
					p := i*w.bits + j
					words[r*per+p/32] |= 1 << (p % 32)
				}
			}
		}
	}
	out := make([]byte, 4*len(words))
	for i, x := range words {
		binary.LittleEndian.PutUint32(out[4*i:], x)
	}
	return out
}

// at returns the dequantized element (e, n, k), computed in f32 as the
// contract says (w = scale·q + bias).
func (w *hostWeight) at(e, n, k int) float64 {
	row := (e*w.n + n)
	if w.bits == 0 {
		return w.dense[row*w.k+k]
	}
	g := row*(w.k/w.group) + k/w.group
	return float64(float32(w.scales[g])*float32(w.q[row*w.k+k]) + float32(w.biases[g]))
}

// upload puts the weight on e's backend and returns the kernels.Weight.
func (w *hostWeight) upload(t testing.TB, e env) *kernels.Weight {
	t.Helper()
	ex := max(w.experts, 1)
	kw := &kernels.Weight{N: w.n, K: w.k, Experts: w.experts, Bits: w.bits, Group: w.group}
	if w.bits == 0 {
		d := e.put(t, w.wdt, w.dense, ex, w.n, w.k)
		kw.Data = view(d, 0, w.wdt, w.n, w.k)
		kw.DataStride = int64(w.n * w.k * w.wdt.Size())
		if w.experts == 0 {
			kw.DataStride = 0
		}
		return kw
	}
	kp := w.k * w.bits / 32
	d := e.putRaw(t, dtype.U32, w.packed(), ex, w.n, kp)
	s := e.put(t, w.sdt, w.scales, ex, w.n, w.k/w.group)
	b := e.put(t, w.sdt, w.biases, ex, w.n, w.k/w.group)
	kw.Data = view(d, 0, dtype.U32, w.n, kp)
	kw.Scales = view(s, 0, w.sdt, w.n, w.k/w.group)
	kw.Biases = view(b, 0, w.sdt, w.n, w.k/w.group)
	if w.experts > 0 {
		kw.DataStride = int64(w.n * kp * 4)
		kw.GroupStride = int64(w.n * w.k / w.group * w.sdt.Size())
	}
	return kw
}

// view returns a view of t at a byte offset with a new dtype and shape.
func view(t kernels.Tensor, off int64, dt dtype.DType, shape ...int) kernels.Tensor {
	return kernels.Tensor{Buf: t.Buf, Offset: t.Offset + off, DType: dt, Shape: shape}
}

// refMatMul returns y[m, n] = Σ_k x[m, k]·w[e(m), n, k] and the magnitudes
// Σ|x·w|; expert(m) picks the expert of row m (nil: 2D weight).
func refMatMul(x []float64, rows int, w *hostWeight, expert func(m int) int) (y, mag []float64) {
	y = make([]float64, rows*w.n)
	mag = make([]float64, rows*w.n)
	for m := range rows {
		e := 0
		if expert != nil {
			e = expert(m)
		}
		for n := range w.n {
			s, a := 0.0, 0.0
			for k := range w.k {
				p := x[m*w.k+k] * w.at(e, n, k)
				s += p
				a += math.Abs(p)
			}
			y[m*w.n+n], mag[m*w.n+n] = s, a
		}
	}
	return y, mag
}

func gelu(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

// name formats a subtest name.
func name(format string, args ...any) string { return fmt.Sprintf(format, args...) }
