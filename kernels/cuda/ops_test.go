package cuda

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

const (
	tolF32  = 2e-4 // f32 activations: long f32 sums, exact dequantization
	tolBF16 = 1.5e-2
	tolElem = 1e-5 // f32 elementwise ops
)

// matmulRef computes y[m][n] = Σ_k x[m][k]·w(e(m), n, k) in float64.
func matmulRef(x []float32, M, N, K int, w func(m, n, k int) float64) []float64 {
	y := make([]float64, M*N)
	for m := range M {
		for n := range N {
			var s float64
			for k := range K {
				s += float64(x[m*K+k]) * w(m, n, k)
			}
			y[m*N+n] = s
		}
	}
	return y
}

func TestMatMulQuantized(t *testing.T) {
	cases := backends(t, tolF32, tolBF16)
	r := rand.New(rand.NewPCG(1, 2))
	type tc struct {
		bits, group, M, N, K int
		sdt                  dtype.DType
		wrapOff              int // -1: Alloc+Upload; else WrapHost with the data at this offset
	}
	var tcs []tc
	for _, bits := range []int{2, 3, 4, 5, 6, 8} {
		for _, group := range []int{32, 64, 128} {
			for _, M := range []int{1, 3, 70} {
				tcs = append(tcs, tc{bits, group, M, 100, 384, dtype.BF16, -1})
			}
		}
	}
	tcs = append(tcs,
		tc{4, 64, 1, 704, 2816, dtype.BF16, 0},   // real expert shape, qmv fast path
		tc{8, 64, 1, 300, 2816, dtype.F16, 0},    // f16 scales
		tc{4, 32, 1, 77, 256, dtype.F32, 0},      // f32 scales
		tc{4, 64, 1, 50, 256, dtype.BF16, 4},     // unaligned data: generic path
		tc{8, 128, 1, 50, 512, dtype.BF16, 8},    // unaligned data: generic path
		tc{4, 64, 5, 50, 256, dtype.BF16, 4},     // unaligned data: generic GEMM loader
		tc{8, 64, 9, 40, 256, dtype.F16, 12},     // unaligned data: generic GEMM loader
		tc{4, 64, 2, 64, 2816, dtype.BF16, 0},    // M=2: matrix-vector rows, or GEMM
		tc{8, 64, 6, 128, 2816, dtype.F32, 0},    // few rows, f32 scales
		tc{8, 64, 40, 128, 704, dtype.BF16, 0},   // router-like: f32 rows as matrix-vector rows
		tc{4, 64, 70, 100, 384, dtype.F16, 0},    // pipelined GEMM, f16 scales (f32 dequantization)
		tc{4, 32, 70, 77, 256, dtype.F32, 0},     // pipelined GEMM, f32 scales
		tc{4, 64, 130, 200, 2816, dtype.BF16, 0}, // prefill GEMM, 3 M tiles
	)
	for _, c := range tcs {
		qw := newQWeight(r, 0, c.N, c.K, c.bits, c.group, c.sdt)
		x := randn(r, c.M*c.K, 1)
		for _, be := range cases {
			w := qw.upload(t, be.be, c.wrapOff >= 0, max(c.wrapOff, 0))
			xr := roundAll(x, be.act)
			want := matmulRef(xr, c.M, c.N, c.K, func(m, n, k int) float64 { return qw.at(0, n, k) })
			xt := put(t, be.be, be.act, xr, c.M, c.K)
			for _, m := range gemmModes(be.be, c.M) {
				yt := poisoned(t, be.be, be.act, c.M, c.N)
				err := m.run(func() error { return be.be.MatMul(yt, xt, w) })
				if err != nil {
					t.Fatal(err)
				}
				check(t, name("MatMul q", m.name, c), be, get(t, be.be, yt), want)
			}
		}
	}
}

// gemmMode is one way the CUDA backend can run a product of several rows:
// its own choice, as matrix-vector launches, as the pipelined GEMM where it
// applies, or through the unpipelined gemm_tc.
type gemmMode struct {
	name   string
	be     *Backend
	plain  bool
	mvMode int
}

func (m gemmMode) run(f func() error) error {
	if m.be == nil {
		return f()
	}
	m.be.gemmPlain, m.be.mvRowsMode = m.plain, m.mvMode
	defer func() { m.be.gemmPlain, m.be.mvRowsMode = false, 0 }()
	return f()
}

// gemmModes lists the modes to test for M rows on be (one for the CPU or a
// single row).
func gemmModes(be kernels.Backend, M int) []gemmMode {
	cb, ok := be.(*Backend)
	if !ok || M == 1 {
		return []gemmMode{{name: "auto"}}
	}
	return []gemmMode{{"auto", cb, false, 0}, {"matvec", cb, false, 1}, {"gemm", cb, false, -1}, {"plain", cb, true, -1}}
}

// qmvVariants lists every 4- and 8-bit matrix-vector kernel variant.
var qmvVariants = map[int][]string{
	4: {mvTC, "qmv4_r1", "qmv4_r2", "qmv4_r4", "qmv4_r8", "qmv4_r1_d4", "qmv4_r2_d3", "qmv4_r2_d4", "qmv4_r4_d3", "qmv4_r4_lb3"},
	8: {"qmv8_r1", "qmv8_r2", "qmv8_r4", "qmv8_r8", "qmv8_r1_d4", "qmv8_r2_d3", "qmv8_r2_d4", "qmv8_r4_d3", "qmv8_r4_lb3"},
}

// TestQMVVariants checks every matrix-vector kernel variant (the backend
// picks one by shape) on plain and expert products, bf16/f16/f32 scales.
func TestQMVVariants(t *testing.T) {
	f32, bf := gpus(t)
	r := rand.New(rand.NewPCG(31, 32))
	type tc struct {
		bits, group, N, K, E, k, M int
		sdt                        dtype.DType
	}
	var tcs []tc
	for _, bits := range []int{4, 8} {
		tcs = append(tcs,
			tc{bits, 32, 100, 384, 0, 0, 1, dtype.BF16},
			tc{bits, 128, 77, 2816, 0, 0, 1, dtype.F16},
			tc{bits, 64, 1000, 704, 0, 0, 1, dtype.F32},
			tc{bits, 64, 96, 2816, 8, 3, 1, dtype.BF16},
			tc{bits, 64, 130, 704, 8, 4, 2, dtype.BF16},
			// Shapes the tensor-core kernel (qmvt) takes at 4 bits: whole
			// tiles of 16 rows, every group size, K of ragged steps.
			tc{bits, 32, 112, 384, 0, 0, 1, dtype.BF16},
			tc{bits, 128, 48, 2816, 0, 0, 1, dtype.F16},
			tc{bits, 64, 208, 704, 0, 0, 1, dtype.F32},
			tc{bits, 64, 96, 704, 8, 4, 2, dtype.BF16},
			tc{bits, 64, 2816, 2816, 0, 0, 3, dtype.BF16},
			// x too long for qmvt's shared memory: the CUDA-core kernel.
			tc{bits, 64, 16, 32768, 0, 0, 1, dtype.BF16},
		)
	}
	for _, c := range tcs {
		qw := newQWeight(r, c.E, c.N, c.K, c.bits, c.group, c.sdt)
		ids := make([]int32, c.M*max(c.k, 1))
		for i := range ids {
			ids[i] = int32(r.IntN(max(c.E, 1)))
		}
		x := randn(r, c.M*c.K, 1)
		for _, be := range []beCase{{"cuda-f32", f32, dtype.F32, tolF32}, {"cuda-bf16", bf, dtype.BF16, tolBF16}} {
			w := qw.upload(t, be.be, false, 0)
			xr := roundAll(x, be.act)
			P, xdiv := c.M, 1
			if c.E > 0 {
				P, xdiv = c.M*c.k, c.k
			}
			xp := make([]float32, P*c.K)
			for p := range P {
				copy(xp[p*c.K:], xr[p/xdiv*c.K:(p/xdiv+1)*c.K])
			}
			want := matmulRef(xp, P, c.N, c.K, func(p, n, k int) float64 {
				if c.E > 0 {
					return qw.at(int(ids[p]), n, k)
				}
				return qw.at(0, n, k)
			})
			xt := put(t, be.be, be.act, xr, c.M, c.K)
			var idt kernels.Tensor
			if c.E > 0 {
				idt = putRaw(t, be.be, dtype.I32, i32bytes(ids), c.M, c.k)
			}
			for _, k := range qmvVariants[c.bits] {
				be.be.(*Backend).mvKernel = k
				yt := poisoned(t, be.be, be.act, P, c.N)
				var err error
				if c.E > 0 {
					err = be.be.MatMulExperts(yt, xt, w, idt)
				} else {
					err = be.be.MatMul(yt, xt, w)
				}
				be.be.(*Backend).mvKernel = ""
				if err != nil {
					t.Fatal(err)
				}
				check(t, name("QMV ", k, c), be, get(t, be.be, yt), want)
			}
		}
	}
}

func TestMatMulDense(t *testing.T) {
	cases := backends(t, tolF32, tolBF16)
	r := rand.New(rand.NewPCG(3, 4))
	for _, wdt := range []dtype.DType{dtype.BF16, dtype.F16, dtype.F32} {
		for _, M := range []int{1, 5, 70} {
			N, K := 150, 328
			dw := newDWeight(r, 0, N, K, wdt)
			x := randn(r, M*K, 1)
			for _, be := range cases {
				w := dw.upload(t, be.be)
				xr := roundAll(x, be.act)
				want := matmulRef(xr, M, N, K, func(m, n, k int) float64 { return dw.at(0, n, k) })
				yt := poisoned(t, be.be, be.act, M, N)
				if err := be.be.MatMul(yt, put(t, be.be, be.act, xr, M, K), w); err != nil {
					t.Fatal(err)
				}
				check(t, name("MatMul dense", wdt, M), be, get(t, be.be, yt), want)
			}
		}
	}
	// f32 output from bf16 input (LM head logits kept in f32).
	f32, bf := gpus(t)
	_ = f32
	dw := newDWeight(r, 0, 64, 256, dtype.BF16)
	x := roundAll(randn(r, 256, 1), dtype.BF16)
	w := dw.upload(t, bf)
	yt := poisoned(t, bf, dtype.F32, 1, 64)
	if err := bf.MatMul(yt, put(t, bf, dtype.BF16, x, 1, 256), w); err != nil {
		t.Fatal(err)
	}
	want := matmulRef(x, 1, 64, 256, func(m, n, k int) float64 { return dw.at(0, n, k) })
	check(t, "MatMul dense bf16->f32", beCase{"cuda-bf16", bf, dtype.BF16, 1e-5}, get(t, bf, yt), want)
}

func TestMatMulExperts(t *testing.T) {
	cases := backends(t, tolF32, tolBF16)
	r := rand.New(rand.NewPCG(5, 6))
	type tc struct {
		bits, E, k, M, N, K int
		perSlot             bool // x is [M·k, K]
	}
	tcs := []tc{
		{4, 8, 3, 1, 96, 256, false},
		{4, 8, 3, 2, 96, 256, true},
		{4, 16, 4, 10, 96, 256, false},
		{4, 16, 4, 100, 96, 256, true},
		{8, 8, 2, 1, 64, 512, false},
		{8, 8, 2, 40, 64, 512, false},
		{3, 8, 2, 1, 64, 256, false},
		{3, 8, 2, 33, 64, 256, true},
		{0, 8, 2, 1, 64, 256, false}, // dense bf16 experts
		{0, 8, 2, 20, 64, 256, false},
		{4, 128, 8, 1, 704, 2816, false}, // the real decode shape
	}
	for _, c := range tcs {
		var qw *qweight
		var dw *dweight
		if c.bits > 0 {
			qw = newQWeight(r, c.E, c.N, c.K, c.bits, 64, dtype.BF16)
		} else {
			dw = newDWeight(r, c.E, c.N, c.K, dtype.BF16)
		}
		ids := make([]int32, c.M*c.k)
		for m := range c.M {
			perm := r.Perm(c.E)
			for j := range c.k {
				ids[m*c.k+j] = int32(perm[j])
			}
		}
		xrows := c.M
		if c.perSlot {
			xrows = c.M * c.k
		}
		x := randn(r, xrows*c.K, 1)
		for _, be := range cases {
			var w *kernels.Weight
			if qw != nil {
				w = qw.upload(t, be.be, false, 0)
			} else {
				w = dw.upload(t, be.be)
			}
			xr := roundAll(x, be.act)
			P := c.M * c.k
			xp := make([]float32, P*c.K) // reference input per pair
			for p := range P {
				src := p / c.k
				if c.perSlot {
					src = p
				}
				copy(xp[p*c.K:], xr[src*c.K:(src+1)*c.K])
			}
			want := matmulRef(xp, P, c.N, c.K, func(p, n, k int) float64 {
				if qw != nil {
					return qw.at(int(ids[p]), n, k)
				}
				return dw.at(int(ids[p]), n, k)
			})
			idt := putRaw(t, be.be, dtype.I32, i32bytes(ids), c.M, c.k)
			xt := put(t, be.be, be.act, xr, xrows, c.K)
			for _, m := range gemmModes(be.be, c.M) {
				yt := poisoned(t, be.be, be.act, c.M, c.k, c.N)
				if err := m.run(func() error { return be.be.MatMulExperts(yt, xt, w, idt) }); err != nil {
					t.Fatal(err)
				}
				check(t, name("MatMulExperts", m.name, c), be, get(t, be.be, yt), want)
			}
		}
	}
}

func TestMoECombine(t *testing.T) {
	cases := backends(t, tolElem, tolBF16)
	r := rand.New(rand.NewPCG(7, 8))
	M, k, N := 5, 8, 300
	x := randn(r, M*k*N, 1)
	wv := randn(r, M*k, 0.3)
	for _, be := range cases {
		xr := roundAll(x, be.act)
		want := make([]float64, M*N)
		for m := range M {
			for n := range N {
				for j := range k {
					want[m*N+n] += float64(wv[m*k+j]) * float64(xr[(m*k+j)*N+n])
				}
			}
		}
		y := poisoned(t, be.be, be.act, M, N)
		if err := be.be.MoECombine(y, put(t, be.be, be.act, xr, M, k, N), put(t, be.be, dtype.F32, wv, M, k)); err != nil {
			t.Fatal(err)
		}
		check(t, "MoECombine", be, get(t, be.be, y), want)
	}
}

func TestEmbed(t *testing.T) {
	cases := backends(t, tolElem, tolBF16)
	r := rand.New(rand.NewPCG(9, 10))
	V, N := 50, 256
	ids := []int32{3, 0, 49, 3, 17}
	qw := newQWeight(r, 0, V, N, 4, 64, dtype.BF16)
	dw := newDWeight(r, 0, V, N, dtype.BF16)
	for _, be := range cases {
		for _, quant := range []bool{true, false} {
			var w *kernels.Weight
			at := dw.at
			if quant {
				w, at = qw.upload(t, be.be, false, 0), qw.at
			} else {
				w = dw.upload(t, be.be)
			}
			want := make([]float64, len(ids)*N)
			for m, id := range ids {
				for n := range N {
					want[m*N+n] = at(0, int(id), n) * float64(float32(16))
				}
			}
			y := poisoned(t, be.be, be.act, len(ids), N)
			if err := be.be.Embed(y, w, putRaw(t, be.be, dtype.I32, i32bytes(ids), len(ids)), 16); err != nil {
				t.Fatal(err)
			}
			check(t, name("Embed quantized", quant), be, get(t, be.be, y), want)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	cases := backends(t, tolElem, tolBF16)
	r := rand.New(rand.NewPCG(11, 12))
	rows, cols := 7, 2816
	x := randn(r, rows*cols, 2)
	wv := randn(r, cols, 1)
	for _, be := range cases {
		for _, withW := range []bool{true, false} {
			xr := roundAll(x, be.act)
			wr := roundAll(wv, be.act)
			want := make([]float64, rows*cols)
			for i := range rows {
				var ss float64
				for j := range cols {
					ss += float64(xr[i*cols+j]) * float64(xr[i*cols+j])
				}
				inv := 1 / math.Sqrt(ss/float64(cols)+1e-6)
				for j := range cols {
					v := float64(xr[i*cols+j]) * inv
					if withW {
						v *= float64(wr[j])
					}
					want[i*cols+j] = v
				}
			}
			xt := put(t, be.be, be.act, xr, rows, cols)
			var wt kernels.Tensor
			if withW {
				wt = put(t, be.be, be.act, wr, cols)
			}
			// in place: y is x
			if err := be.be.RMSNorm(xt, xt, wt, 1e-6); err != nil {
				t.Fatal(err)
			}
			check(t, name("RMSNorm weight", withW), be, get(t, be.be, xt), want)
		}
	}
}

func TestRoPE(t *testing.T) {
	cases := backends(t, 2e-5, tolBF16)
	r := rand.New(rand.NewPCG(13, 14))
	T, H, D := 3, 4, 64
	pos := []int32{0, 7, 5000}
	inv := make([]float32, D/2)
	for i := range inv {
		if i < D/8 { // partial rotary: the rest stays put
			inv[i] = float32(math.Pow(1e6, -2*float64(i)/float64(D)))
		}
	}
	x := randn(r, T*H*D, 1)
	for _, be := range cases {
		xr := roundAll(x, be.act)
		want := make([]float64, len(xr))
		for i := range want {
			want[i] = float64(xr[i])
		}
		for ti := range T {
			for h := range H {
				base := (ti*H + h) * D
				for i := range D / 2 {
					if inv[i] == 0 {
						continue
					}
					ang := float64(float32(pos[ti]) * inv[i])
					s, c := math.Sincos(ang)
					a, b := float64(xr[base+i]), float64(xr[base+i+D/2])
					want[base+i] = a*c - b*s
					want[base+i+D/2] = b*c + a*s
				}
			}
		}
		xt := put(t, be.be, be.act, xr, T, H, D)
		if err := be.be.RoPE(xt, putRaw(t, be.be, dtype.I32, i32bytes(pos), T), put(t, be.be, dtype.F32, inv, D/2)); err != nil {
			t.Fatal(err)
		}
		check(t, "RoPE", be, get(t, be.be, xt), want)
	}
}

func geluTanh(g float64) float64 {
	return 0.5 * g * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(g+0.044715*g*g*g)))
}

func TestElementwise(t *testing.T) {
	cases := backends(t, tolElem, tolBF16)
	r := rand.New(rand.NewPCG(15, 16))
	n := 10000
	a, b := randn(r, n, 2), randn(r, n, 2)
	for _, be := range cases {
		ar, br := roundAll(a, be.act), roundAll(b, be.act)
		ops := []struct {
			name string
			ref  func(x, y float64) float64
			run  func(y, x1, x2 kernels.Tensor) error
		}{
			{"GeluTanhMul", func(x, y float64) float64 { return geluTanh(x) * y }, be.be.GeluTanhMul},
			{"Add", func(x, y float64) float64 { return x + y }, be.be.Add},
			{"Scale", func(x, _ float64) float64 { return float64(float32(0.37)) * x },
				func(y, x1, _ kernels.Tensor) error { return be.be.Scale(y, x1, 0.37) }},
			{"Softcap", func(x, _ float64) float64 { return 1.5 * math.Tanh(x/1.5) },
				func(y, x1, _ kernels.Tensor) error { return be.be.Softcap(y, x1, 1.5) }},
		}
		for _, op := range ops {
			want := make([]float64, n)
			for i := range want {
				want[i] = op.ref(float64(ar[i]), float64(br[i]))
			}
			y := poisoned(t, be.be, be.act, 100, 100)
			if err := op.run(y, put(t, be.be, be.act, ar, 100, 100), put(t, be.be, be.act, br, 100, 100)); err != nil {
				t.Fatal(err)
			}
			check(t, op.name, be, get(t, be.be, y), want)
		}
	}
}

func TestSoftmax(t *testing.T) {
	cases := backends(t, tolElem, tolBF16)
	r := rand.New(rand.NewPCG(17, 18))
	rows, cols := 4, 3000
	x := randn(r, rows*cols, 3)
	for _, be := range cases {
		xr := roundAll(x, be.act)
		want := make([]float64, rows*cols)
		for i := range rows {
			m := math.Inf(-1)
			for j := range cols {
				m = max(m, float64(xr[i*cols+j]))
			}
			var s float64
			for j := range cols {
				s += math.Exp(float64(xr[i*cols+j]) - m)
			}
			for j := range cols {
				want[i*cols+j] = math.Exp(float64(xr[i*cols+j])-m) / s
			}
		}
		y := poisoned(t, be.be, be.act, rows, cols)
		if err := be.be.Softmax(y, put(t, be.be, be.act, xr, rows, cols)); err != nil {
			t.Fatal(err)
		}
		check(t, "Softmax", be, get(t, be.be, y), want)
	}
}

func TestRouterTopK(t *testing.T) {
	cases := backends(t, 1e-5, 1e-5)
	r := rand.New(rand.NewPCG(19, 20))
	// Expert counts for each kernel variant (4, 8 and 32 logits a lane).
	for _, E := range []int{128, 200, 600} {
		testRouterTopK(t, r, cases, E)
	}
}

func testRouterTopK(t *testing.T, r *rand.Rand, cases []beCase, E int) {
	M, k := 6, 8
	logits := randn(r, M*E, 2)
	// ties: row 1 has equal logits at 5 and 9 (lower index first)
	logits[1*E+5], logits[1*E+9] = 10, 10
	pes := randn(r, E, 1)
	for _, be := range cases {
		lr := roundAll(logits, be.act)
		wantIDs := make([]float64, M*k)
		wantW := make([]float64, M*k)
		for m := range M {
			row := lr[m*E : (m+1)*E]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = max(mx, float64(v))
			}
			p := make([]float64, E)
			var s float64
			for e, v := range row {
				p[e] = math.Exp(float64(v) - mx)
				s += p[e]
			}
			idx := make([]int, E)
			for e := range idx {
				idx[e] = e
			}
			sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
			var tot float64
			for j := range k {
				tot += p[idx[j]] / s
			}
			for j := range k {
				wantIDs[m*k+j] = float64(idx[j])
				wantW[m*k+j] = p[idx[j]] / s / tot * float64(pes[idx[j]])
			}
		}
		w := poisoned(t, be.be, dtype.F32, M, k)
		ids, err := be.be.Alloc(dtype.I32, M, k)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.be.RouterTopK(w, ids, put(t, be.be, be.act, lr, M, E), put(t, be.be, dtype.F32, pes, E), k); err != nil {
			t.Fatal(err)
		}
		gotIDs := get(t, be.be, ids)
		for i := range wantIDs {
			if float64(gotIDs[i]) != wantIDs[i] {
				t.Fatalf("RouterTopK of %d experts on %s: ids %v, want %v", E, be.name, gotIDs[:k], wantIDs[:k])
			}
		}
		check(t, "RouterTopK", be, get(t, be.be, w), wantW)
	}
}

func TestStoreKV(t *testing.T) {
	cases := backends(t, 0, 0)
	r := rand.New(rand.NewPCG(21, 22))
	capacity, cols := 8, 96
	pos := []int32{3, 9, 12} // ring: slots 3, 1, 4
	src := randn(r, len(pos)*cols, 1)
	for _, be := range cases {
		sr := roundAll(src, be.act)
		want := make([]float64, capacity*cols)
		for i, p := range pos {
			for c := range cols {
				want[int(p)%capacity*cols+c] = float64(sr[i*cols+c])
			}
		}
		cache, err := be.be.Alloc(be.act, capacity, cols)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.be.StoreKV(cache, put(t, be.be, be.act, sr, len(pos), cols), putRaw(t, be.be, dtype.I32, i32bytes(pos), len(pos))); err != nil {
			t.Fatal(err)
		}
		check(t, "StoreKV", be, get(t, be.be, cache), want)
	}
}

// attentionRef computes attention in float64 over the cache as the contract
// describes it.
func attentionRef(q, kc, vc []float32, pos []int32, capacity int, p kernels.AttentionParams) []float64 {
	H, KVH, D := p.Heads, p.KVHeads, p.HeadDim
	G := H / KVH
	out := make([]float64, len(pos)*H*D)
	for t, ps := range pos {
		lo := 0
		if p.Window > 0 {
			lo = max(0, int(ps)-p.Window+1)
		}
		for h := range H {
			kvh := h / G
			qv := q[(t*H+h)*D : (t*H+h+1)*D]
			var sc []float64
			mx := math.Inf(-1)
			for j := lo; j <= int(ps); j++ {
				kr := kc[((j%capacity)*KVH+kvh)*D:]
				var s float64
				for d := range D {
					s += float64(qv[d]) * float64(kr[d])
				}
				s *= float64(p.Scale)
				sc = append(sc, s)
				mx = max(mx, s)
			}
			var tot float64
			for i := range sc {
				sc[i] = math.Exp(sc[i] - mx)
				tot += sc[i]
			}
			for i, j := 0, lo; j <= int(ps); i, j = i+1, j+1 {
				vr := vc[((j%capacity)*KVH+kvh)*D:]
				for d := range D {
					out[(t*H+h)*D+d] += sc[i] / tot * float64(vr[d])
				}
			}
		}
	}
	return out
}

// TestAttnHeadSplit pins the decode attention's choice of blocks per kv
// head: only where the splits over keys leave most SMs idle.
func TestAttnHeadSplit(t *testing.T) {
	for _, c := range []struct{ g, blocks, sms, want int }{
		{8, 20, 132, 4},  // 26B-A4B global layer, 640 keys: 2 kv heads × 10 splits
		{2, 128, 132, 1}, // its sliding layers: 8 × 16
		{8, 256, 132, 1}, // the global layer at 8192 keys
		{16, 4, 132, 16}, // every head its own block
		{6, 10, 132, 2},  // only divisors of g
		{1, 1, 132, 1},   // one head a kv head
		{8, 66, 132, 2},  // half the SMs: doubled to one block an SM
		{8, 67, 132, 1},  // doubling would pass one block an SM
		{4, 16, 132, 4},
	} {
		if got := attnHeadSplit(c.g, c.blocks, c.sms); got != c.want {
			t.Errorf("attnHeadSplit(%d, %d, %d) = %d, want %d", c.g, c.blocks, c.sms, got, c.want)
		}
	}
}

func TestAttention(t *testing.T) {
	cases := backends(t, 2e-5, tolBF16)
	r := rand.New(rand.NewPCG(23, 24))
	type tc struct {
		H, KVH, D, capacity, window int
		pos                         []int32
	}
	seq := func(from, n int) []int32 {
		v := make([]int32, n)
		for i := range v {
			v[i] = int32(from + i)
		}
		return v
	}
	tcs := []tc{
		{16, 8, 256, 1024, 0, []int32{0}},                        // first token
		{16, 8, 256, 1024, 0, []int32{700}},                      // decode, several splits
		{16, 8, 256, 64, 64, []int32{1000}},                      // sliding ring buffer
		{16, 2, 512, 4096, 0, []int32{3000}},                     // global layer shape, G = 8
		{16, 8, 256, 128, 100, []int32{350}},                     // window smaller than the ring
		{8, 8, 64, 256, 0, seq(0, 40)},                           // prefill from 0
		{16, 2, 128, 512, 32, seq(100, 50)},                      // prefill continuing, windowed
		{32, 2, 64, 2048, 0, []int32{1500, 1501, 1502}},          // G = 16
		{16, 8, 256, 1024, 0, seq(0, 150)},                       // long prefill
		{16, 8, 256, 300, 128, seq(500, 137)},                    // the same over a ring, windowed
		{16, 8, 256, 128, 64, []int32{80, 3, 81, 90, 7}},         // rows out of order
		{16, 2, 512, 4096, 0, seq(1000, 70)},                     // global layer prefill, G = 8, D = 512
		{8, 8, 128, 256, 0, append(seq(200, 20), seq(3, 20)...)}, // 40 rows, two runs of positions
		{16, 2, 512, 8192, 0, []int32{8000}},                     // global decode, 128 key splits
		{16, 2, 512, 640, 0, []int32{600}},                       // global decode, few keys: heads split over 4 blocks
		{32, 2, 64, 128, 0, []int32{100}},                        // G = 16 split over 16 blocks
	}
	for _, c := range tcs {
		p := kernels.AttentionParams{Heads: c.H, KVHeads: c.KVH, HeadDim: c.D, Window: c.window, Scale: 1}
		if c.D == 64 {
			p.Scale = 0.125
		}
		T := len(c.pos)
		q := randn(r, T*c.H*c.D, 1)
		kc := randn(r, c.capacity*c.KVH*c.D, 1)
		vc := randn(r, c.capacity*c.KVH*c.D, 1)
		for _, be := range cases {
			qr, kr, vr := roundAll(q, be.act), roundAll(kc, be.act), roundAll(vc, be.act)
			want := attentionRef(qr, kr, vr, c.pos, c.capacity, p)
			// Where the tensor-core prefill kernel applies, the split-key
			// kernel is checked too.
			cb, _ := be.be.(*Backend)
			for _, plain := range []bool{false, true} {
				if plain && (cb == nil || !cb.attnTC(T, c.D, kernels.Tensor{DType: be.act}, kernels.Tensor{DType: be.act},
					kernels.Tensor{DType: be.act}, 0, 0)) {
					continue
				}
				if cb != nil {
					cb.attnPlain = plain
				}
				out := poisoned(t, be.be, be.act, T, c.H*c.D)
				err := be.be.Attention(out, put(t, be.be, be.act, qr, T, c.H*c.D),
					put(t, be.be, be.act, kr, c.capacity, c.KVH*c.D), put(t, be.be, be.act, vr, c.capacity, c.KVH*c.D),
					putRaw(t, be.be, dtype.I32, i32bytes(c.pos), T), p)
				if cb != nil {
					cb.attnPlain = false
				}
				if err != nil {
					t.Fatal(err)
				}
				check(t, name("Attention", c.H, c.KVH, c.D, c.capacity, c.window, c.pos[0], T, "plain", plain), be, get(t, be.be, out), want)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	_, bf := gpus(t)
	x, _ := bf.Alloc(dtype.BF16, 2, 64)
	y, _ := bf.Alloc(dtype.BF16, 2, 30)
	w := &kernels.Weight{Data: x, N: 2, K: 64}
	if err := bf.MatMul(y, x, w); err == nil {
		t.Error("MatMul with mismatched shapes succeeded")
	} else {
		t.Logf("MatMul error: %v", err)
	}
	if err := bf.Add(y, x, x); err == nil {
		t.Error("Add with mismatched sizes succeeded")
	}
	other := cpuBE
	ct, _ := other.Alloc(dtype.BF16, 2, 64)
	if err := bf.Add(x, ct, x); err == nil {
		t.Error("a CPU tensor was accepted")
	} else {
		t.Logf("foreign tensor: %v", err)
	}
	view := x
	view.Offset = x.Bytes()
	if err := bf.Scale(view, x, 2); err == nil {
		t.Error("an out-of-buffer view was accepted")
	}
	if err := bf.RouterTopK(y, y, x, kernels.Tensor{}, 8); err == nil {
		t.Error("RouterTopK with wrong dtypes succeeded")
	}
	h, _ := bf.Alloc(dtype.BF16, 2, 64)
	for _, o := range []kernels.NormOut{
		{Y: y, Norm: kernels.NormParams{Eps: 1e-6}},                                                      // not h's shape
		{Y: x, Norm: kernels.NormParams{Off: true}},                                                      // nothing to norm with
		{Y: x, Norm: kernels.NormParams{Weight: y, Eps: 1e-6}},                                           // a weight not of a row's size
		{Y: kernels.Tensor{DType: dtype.BF16, Shape: []int{2, 64}}, Norm: kernels.NormParams{Eps: 1e-6}}, // no buffer
	} {
		if err := bf.AddRMSNorm(h, x, kernels.Tensor{}, 1e-6, 1, o); err == nil {
			t.Errorf("AddRMSNorm with the normed copy %v succeeded", o)
		} else {
			t.Logf("AddRMSNorm NormOut error: %v", err)
		}
	}
}

// TestGraphReplay records a small step (RMSNorm, MatMul, Add, RouterTopK)
// once and replays it after uploading new inputs.
func TestGraphReplay(t *testing.T) {
	_, be := gpus(t)
	r := rand.New(rand.NewPCG(25, 26))
	K, N := 256, 128
	qw := newQWeight(r, 0, N, K, 4, 64, dtype.BF16)
	w := qw.upload(t, be, false, 0)
	x, _ := be.Alloc(dtype.BF16, 1, K)
	h, _ := be.Alloc(dtype.BF16, 1, K)
	y, _ := be.Alloc(dtype.BF16, 1, N)
	y2, _ := be.Alloc(dtype.BF16, 1, N)
	ids, _ := be.Alloc(dtype.I32, 1, 4)
	wts, _ := be.Alloc(dtype.F32, 1, 4)
	run := func() error {
		if err := be.RMSNorm(h, x, kernels.Tensor{}, 1e-6); err != nil {
			return err
		}
		if err := be.MatMul(y, h, w); err != nil {
			return err
		}
		if err := be.Add(y2, y, y); err != nil {
			return err
		}
		return be.RouterTopK(wts, ids, y2, kernels.Tensor{}, 4)
	}
	// Warm up (compiles the kernels outside the capture).
	if err := be.Upload(x, encode(randn(r, K, 1), dtype.BF16)); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	if err := be.BeginCapture(); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	if err := be.Upload(x, make([]byte, 2*K)); err == nil {
		t.Error("Upload during capture succeeded")
	}
	g, err := be.EndCapture()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for it := range 3 {
		xv := randn(r, K, 1)
		if err := be.Upload(x, encode(xv, dtype.BF16)); err != nil {
			t.Fatal(err)
		}
		if err := g.Launch(); err != nil {
			t.Fatal(err)
		}
		gotGraph := get(t, be, y2)
		gotIDs := get(t, be, ids)
		if err := run(); err != nil {
			t.Fatal(err)
		}
		want := get(t, be, y2)
		wantIDs := get(t, be, ids)
		for i := range want {
			if gotGraph[i] != want[i] {
				t.Fatalf("replay %d: y[%d] = %v, direct run %v", it, i, gotGraph[i], want[i])
			}
		}
		for i := range wantIDs {
			if gotIDs[i] != wantIDs[i] {
				t.Fatalf("replay %d: ids %v, direct run %v", it, gotIDs, wantIDs)
			}
		}
	}
}

// TestKernelCache checks that a second backend reads its kernels from the
// disk cache instead of compiling them.
func TestKernelCache(t *testing.T) {
	gpus(t)
	dir := t.TempDir()
	for i := range 2 {
		b, err := New(WithCacheDir(dir))
		if err != nil {
			t.Fatal(err)
		}
		x, _ := b.Alloc(dtype.BF16, 4, 4)
		if err := b.Scale(x, x, 2); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
		compiled, cached := b.KernelBuilds()
		b.Close()
		t.Logf("start %d: %d modules compiled, %d from the cache", i, compiled, cached)
		if i == 1 && (compiled != 0 || cached == 0) {
			t.Errorf("second start compiled %d modules and read %d from the cache", compiled, cached)
		}
	}
}

// TestZZTolerances runs last and logs the largest relative error measured per
// op and backend (the documented bf16 tolerances come from here).
func TestZZTolerances(t *testing.T) {
	gpus(t)
	statsMu.Lock()
	defer statsMu.Unlock()
	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("%-40s max rel err %.3g", k, stats[k])
	}
}
