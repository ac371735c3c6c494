//go:build unix

package metal

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
)

// Tests of the emulator itself: it knows every kernel of the source, its
// collectives and barriers synchronize like the hardware, it reports
// divergent ones, AddressSanitizer catches out-of-bounds accesses, and a bug
// planted in a kernel is caught by the op tests.

// emuOf returns the emulator behind b.
func emuOf(t *testing.T, b *Backend) *emulator {
	t.Helper()
	e, ok := b.exec.(*emulator)
	if !ok {
		t.Fatalf("backend %s is not emulated", b.Name())
	}
	return e
}

// f32Mem allocates emulator memory holding vals as float32.
func f32Mem(t *testing.T, e *emulator, vals []float64) Memory {
	t.Helper()
	m, err := e.Alloc(int64(4 * len(vals)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Free(m) })
	copy(m.Bytes(), encode(dtype.F32, vals))
	return m
}

func whole(m Memory) Arg { return Arg{Mem: m, Len: m.Len()} }

func TestEmulatorKnowsEveryKernel(t *testing.T) {
	e := emuOf(t, emulated(t))
	got, err := e.kernels()
	if err != nil {
		t.Fatal(err)
	}
	src, err := emuSource(emuConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := parseKernels(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("runner has %d kernels, the source %d", len(got), len(want))
	}
	for _, k := range want {
		if n, ok := got[k.Name]; !ok || n != k.Buffers() {
			t.Errorf("kernel %s: runner has %d buffers (present %v), source %d", k.Name, n, ok, k.Buffers())
		}
	}
}

func TestEmulatorCollectivesAndBarriers(t *testing.T) {
	e := emuOf(t, emulated(t))
	const n = 128 // two threadgroups of 64: two SIMD-groups each
	x := make([]float64, n)
	for i := range x {
		x[i] = float64(i)
	}
	xm, ym := f32Mem(t, e, x), f32Mem(t, e, make([]float64, n))
	d := &Dispatch{Kernel: "planted_ok", Groups: [3]int{2, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm), whole(ym)}}
	if err := e.Run(d); err != nil {
		t.Fatal(err)
	}
	got := decode(dtype.F32, ym.Bytes())
	for i := range n {
		sg := i / 32
		s := 0.0
		for j := sg * 32; j < sg*32+32; j++ {
			s += x[j]
		}
		if want := s + x[i^1]; got[i] != want {
			t.Fatalf("y[%d] = %v, want %v", i, got[i], want)
		}
	}
}

func TestEmulatorReportsDivergence(t *testing.T) {
	e := emuOf(t, emulated(t))
	xm, ym := f32Mem(t, e, make([]float64, 64)), f32Mem(t, e, make([]float64, 64))
	for _, c := range []struct{ kernel, want string }{
		{"planted_divergent_sum", "divergent simd_sum"},
		{"planted_divergent_barrier", "threadgroup_barrier"},
		{"planted_mismatched", "divergent collectives"},
	} {
		d := &Dispatch{Kernel: c.kernel, Groups: [3]int{1, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm), whole(ym)}}
		err := e.Run(d)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.kernel, err, c.want)
		} else {
			t.Logf("%s: %v", c.kernel, err)
		}
	}
	// The runner survives reported divergence.
	d := &Dispatch{Kernel: "planted_ok", Groups: [3]int{1, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm), whole(ym)}}
	if err := e.Run(d); err != nil {
		t.Fatalf("after the planted errors: %v", err)
	}
}

func TestEmulatorRejectsBadDispatches(t *testing.T) {
	e := emuOf(t, emulated(t))
	xm := f32Mem(t, e, make([]float64, 8))
	for _, d := range []*Dispatch{
		{Kernel: "no_such_kernel", Groups: [3]int{1, 1, 1}, Threads: [3]int{1, 1, 1}},
		{Kernel: "planted_ok", Groups: [3]int{1, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm)}},
		{Kernel: "planted_ok", Groups: [3]int{1, 1, 1}, Threads: [3]int{2048, 1, 1}, Args: []Arg{whole(xm), whole(xm)}},
		{Kernel: "planted_ok", Groups: [3]int{1, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm), {Mem: xm, Offset: 4, Len: 32}}},
	} {
		if err := e.Run(d); err == nil {
			t.Errorf("%s with %d args: no error", d.Kernel, len(d.Args))
		}
	}
}

func TestAddressSanitizer(t *testing.T) {
	b, err := NewEmulated(WithAddressSanitizer())
	if errors.Is(err, ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		if strings.Contains(err.Error(), "fsanitize") || strings.Contains(err.Error(), "asan") {
			t.Skipf("the compiler cannot build with AddressSanitizer: %v", err)
		}
		t.Fatal(err)
	}
	defer b.Close()

	// A real kernel runs clean under ASan, its buffers cut to the bound ranges.
	r := rand.New(rand.NewPCG(20, 20))
	en := env{"metal-emulated-asan", b, dtype.BF16}
	hw := newQuant(r, 0, 12, 128, 5, 32, dtype.BF16)
	w := hw.upload(t, en)
	x := randVals(r, 2*128, 1)
	want, mag := refMatMul(x, 2, hw, nil)
	xt := en.put(t, dtype.BF16, x, 2, 128)
	yt := en.put(t, dtype.BF16, nil, 2, 12)
	if err := b.MatMul(yt, xt, w); err != nil {
		t.Fatal(err)
	}
	compare(t, "qmv under ASan", en.get(t, yt), want, mag, outTol(dtype.BF16))

	// A kernel reading one element past its input is reported.
	e := emuOf(t, b)
	xm, ym := f32Mem(t, e, make([]float64, 8)), f32Mem(t, e, make([]float64, 8))
	d := &Dispatch{Kernel: "planted_oob_read", Groups: [3]int{1, 1, 1}, Threads: [3]int{32, 1, 1},
		Args: []Arg{whole(xm), whole(ym), inline(struct{ N uint32 }{8})}}
	err = e.Run(d)
	if err == nil || !strings.Contains(err.Error(), "AddressSanitizer") {
		t.Fatalf("out-of-bounds read: error %v, want an AddressSanitizer report", err)
	}
	if !strings.Contains(err.Error(), "heap-buffer-overflow") {
		t.Errorf("report does not say heap-buffer-overflow:\n%v", err)
	}
}

func TestPlantedKernelBugIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a second runner")
	}
	// Plant a bug in qmv's bit extraction (one bit of each value lost): the
	// comparison with the reference must fail.
	src := Source()
	good := "qdot += xv[i] * float((v >> sh) & mask);"
	if !strings.Contains(src, good) {
		t.Fatal("the line to plant the bug in is gone; update this test")
	}
	b, err := NewEmulated(withSource(strings.Replace(src, good, "qdot += xv[i] * float((v >> sh) & (mask >> 1));", 1)))
	if errors.Is(err, ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := rand.New(rand.NewPCG(21, 21))
	en := env{"planted", b, dtype.BF16}
	hw := newQuant(r, 0, 16, 128, 4, 64, dtype.BF16)
	w := hw.upload(t, en)
	x := randVals(r, 128, 1)
	want, mag := refMatMul(x, 1, hw, nil)
	xt := en.put(t, dtype.BF16, x, 1, 128)
	yt := en.put(t, dtype.F32, nil, 1, 16)
	if err := b.MatMul(yt, xt, w); err != nil {
		t.Fatal(err)
	}
	got := en.get(t, yt)
	caught := false
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-3*mag[i]+1e-4 {
			caught = true
		}
	}
	if !caught {
		t.Fatal("the planted bit-extraction bug went unnoticed")
	}
}

// TestScheduleOrderInvariance runs every kernel with the threads and
// threadgroups scheduled first to last and last to first: the results must
// be bit-identical (the kernels have no races on threadgroup memory), while a
// kernel with a planted race (a missing barrier) gives different results.
func TestScheduleOrderInvariance(t *testing.T) {
	b, err := NewEmulated()
	if errors.Is(err, ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	e := emuOf(t, b)
	en := env{"metal-emulated", b, dtype.BF16}
	r := rand.New(rand.NewPCG(40, 40))
	mw := newMiniWeights(r)
	hw := newQuant(r, 0, 40, 256, 5, 32, dtype.BF16)
	x := randVals(r, 40*256, 1)
	run := func(rev bool) ([][]float64, []float64, []float64) {
		if err := e.setReverse(rev); err != nil {
			t.Fatal(err)
		}
		probs := runMini(t, en, mw, [][]int{{3, 17, 42}, {7}, {49}, {0}, {23}, {5}})
		w := hw.upload(t, en)
		xt := en.put(t, dtype.BF16, x, 40, 256)
		yt := en.put(t, dtype.F32, nil, 40, 40)
		if err := b.MatMul(yt, xt, w); err != nil { // the tiled qmm
			t.Fatal(err)
		}
		xm, ym := f32Mem(t, e, x[:64]), f32Mem(t, e, make([]float64, 64))
		d := &Dispatch{Kernel: "planted_race", Groups: [3]int{1, 1, 1}, Threads: [3]int{64, 1, 1}, Args: []Arg{whole(xm), whole(ym)}}
		if err := e.Run(d); err != nil {
			t.Fatal(err)
		}
		return probs, en.get(t, yt), decode(dtype.F32, ym.Bytes())
	}
	fp, fy, frace := run(false)
	rp, ry, rrace := run(true)
	for s := range fp {
		compare(t, name("mini model step %d, reversed schedule", s), rp[s], fp[s], nil, tol{})
	}
	compare(t, "qmm, reversed schedule", ry, fy, nil, tol{})
	same := true
	for i := range frace {
		same = same && frace[i] == rrace[i]
	}
	if same {
		t.Error("the planted race gives the same result in both schedules: the check is blind")
	}
}
