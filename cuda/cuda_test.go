package cuda

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// setup returns a bound context and a stream, or skips without a GPU.
func setup(t testing.TB) (*Context, *Stream) {
	t.Helper()
	if err := Load(); err != nil {
		t.Skipf("no CUDA driver: %v", err)
	}
	dev, err := GetDevice(0)
	if err != nil {
		t.Skipf("no CUDA device: %v", err)
	}
	ctx, err := NewContext(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctx.Bind(); err != nil {
		t.Fatal(err)
	}
	s, err := NewStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Destroy()
		ctx.Unbind()
		ctx.Close()
	})
	return ctx, s
}

func TestDeviceProperties(t *testing.T) {
	ctx, _ := setup(t)
	libs, _ := LoadedLibraries()
	t.Logf("libcuda: %s", libs.Driver)
	t.Logf("libnvrtc: %s (err %v)", libs.NVRTC, NVRTCAvailable())
	p, err := ctx.Device().Properties()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device: %s", p)
	t.Logf("props: %+v", p)
	if ma, mi, err := NVRTCVersion(); err == nil {
		t.Logf("NVRTC %d.%d", ma, mi)
	}
	if p.SMs <= 0 || p.Major <= 0 || p.TotalMem <= 0 {
		t.Fatalf("implausible properties %+v", p)
	}
	free, total, err := MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("memory: %d MiB free of %d MiB", free>>20, total>>20)
}

const saxpySrc = `
extern "C" __global__ void saxpy(float* y, const float* x, float a, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) y[i] = a * x[i] + y[i];
}
`

func TestCompileLaunchGraph(t *testing.T) {
	ctx, s := setup(t)
	p, _ := ctx.Device().Properties()
	img, log, err := Compile(saxpySrc, "saxpy.cu", []string{"--gpu-architecture=" + p.Arch()})
	if err != nil {
		t.Fatal(err)
	}
	if log != "" {
		t.Logf("log: %s", log)
	}
	m, err := LoadModule(img)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unload()
	f, err := m.Function("saxpy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Function("nope"); err == nil {
		t.Fatal("missing function found")
	}
	const n = 1 << 20
	x := make([]float32, n)
	y := make([]float32, n)
	for i := range x {
		x[i] = rand.Float32()
		y[i] = rand.Float32()
	}
	pool := NewPool()
	defer pool.Close()
	st, err := NewStaging(4, 1<<18) // small slots: exercise chunking
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dx, err := pool.Alloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	dy, err := pool.Alloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Upload(s, dx, f32bytes(x)); err != nil {
		t.Fatal(err)
	}
	if err := st.Upload(s, dy, f32bytes(y)); err != nil {
		t.Fatal(err)
	}
	args := new(Args)
	args.Ptr(dy).Ptr(dx).F32(2).I32(n)
	if err := Launch(f, Dim3{n / 256, 1, 1}, Dim3{256, 1, 1}, 0, s, args); err != nil {
		t.Fatal(err)
	}
	// Capture two more launches in a graph and replay it twice: y += 4·2·x.
	if err := s.BeginCapture(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := Launch(f, Dim3{n / 256, 1, 1}, Dim3{256, 1, 1}, 0, s, args); err != nil {
			t.Fatal(err)
		}
	}
	g, err := s.EndCapture()
	if err != nil {
		t.Fatal(err)
	}
	ge, err := g.Instantiate()
	if err != nil {
		t.Fatal(err)
	}
	start, _ := NewEvent(true)
	end, _ := NewEvent(true)
	start.Record(s)
	for i := 0; i < 2; i++ {
		if err := ge.Launch(s); err != nil {
			t.Fatal(err)
		}
	}
	end.Record(s)
	out := make([]byte, 4*n)
	if err := st.Download(s, out, dy); err != nil {
		t.Fatal(err)
	}
	ms, err := Elapsed(start, end)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("2 graph replays: %.3f ms", ms)
	for i := 0; i < n; i++ {
		got := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:]))
		want := y[i] + 5*2*x[i]
		if math.Abs(float64(got-want)) > 1e-5*math.Abs(float64(want))+1e-6 {
			t.Fatalf("y[%d] = %v, want %v", i, got, want)
		}
	}
	ge.Destroy()
	g.Destroy()
	start.Destroy()
	end.Destroy()
}

func TestCompileError(t *testing.T) {
	ctx, _ := setup(t)
	p, _ := ctx.Device().Properties()
	_, _, err := Compile("extern \"C\" __global__ void k() { undefined_thing(); }", "bad.cu", []string{"--gpu-architecture=" + p.Arch()})
	if err == nil || !strings.Contains(err.Error(), "undefined_thing") {
		t.Fatalf("want a compile error naming the identifier, got %v", err)
	}
	t.Logf("error reads: %v", err)
}

func TestPoolReuseAndMemset(t *testing.T) {
	_, s := setup(t)
	pool := NewPool()
	defer pool.Close()
	a, err := pool.Alloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	pool.Free(a)
	b, err := pool.Alloc(1020) // same class (1024)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("pool did not reuse the block: %x vs %x", a, b)
	}
	if err := MemsetD32Async(b, 0x3f800000, 255, s); err != nil {
		t.Fatal(err)
	}
	st, err := NewStaging(2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	out := make([]byte, 1020)
	if err := st.Download(s, out, b); err != nil {
		t.Fatal(err)
	}
	if v := math.Float32frombits(binary.LittleEndian.Uint32(out[1016:])); v != 1 {
		t.Fatalf("memset gave %v", v)
	}
	// An out-of-memory error is an Error with the driver's name.
	_, err = MemAlloc(1 << 50)
	if !IsOutOfMemory(err) {
		t.Fatalf("1 PiB allocation: %v", err)
	}
	t.Logf("OOM reads: %v", err)
}

func TestSizeClass(t *testing.T) {
	for _, n := range []int64{1, 256, 257, 1000, 1024, 1025, 3 << 20, 1<<30 + 1} {
		c := sizeClass(n)
		if c < n || float64(c) > 1.25*float64(n)+256 {
			t.Errorf("sizeClass(%d) = %d", n, c)
		}
	}
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// TestNVRTCHeaders logs which toolkit headers NVRTC provides built in (for
// information; the kernels use none of them).
func TestNVRTCHeaders(t *testing.T) {
	ctx, _ := setup(t)
	p, _ := ctx.Device().Properties()
	for _, h := range []string{"cuda_bf16.h", "cuda_fp16.h", "mma.h", "cuda/std/cstdint"} {
		src := "#include <" + h + ">\nextern \"C\" __global__ void k() {}\n"
		_, _, err := Compile(src, "h.cu", []string{"--gpu-architecture=" + p.Arch()})
		t.Logf("#include <%s>: %v", h, err == nil)
	}
}

// TestDownloadReusedBuffer reads device memory into one host buffer again
// and again (the second read registers it and copies into it directly),
// then into others, checking the bytes of every read.
func TestDownloadReusedBuffer(t *testing.T) {
	_, s := setup(t)
	const n = 1 << 20 // 1 MiB: at least directMin
	d, err := MemAlloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer MemFree(d)
	st, err := NewStaging(2, 1<<18) // slots smaller than a read: chunked when staged
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	read := func(dst []byte, v uint32) {
		t.Helper()
		if err := MemsetD32Async(d, v, n/4, s); err != nil {
			t.Fatal(err)
		}
		if err := st.Download(s, dst, d); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(dst); i += 4 {
			if got := binary.LittleEndian.Uint32(dst[i:]); got != v {
				t.Fatalf("read %d: word %d is %#x, want %#x", v, i/4, got, v)
			}
		}
	}
	a, b := make([]byte, n), make([]byte, n)
	for i, dst := range [][]byte{a, a, a, b, a, b, b, b, a[:n/2], a[:n/2]} {
		read(dst, uint32(i+1))
		if i == 2 && st.reg == nil && !st.noReg {
			t.Fatal("a reused destination was not registered")
		}
	}
	t.Logf("registered: %v, refused: %v", st.reg != nil, st.noReg)
}
