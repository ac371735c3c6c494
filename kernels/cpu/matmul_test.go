package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// The f32 kernels are compared with float64 references; the tolerance is
// relative to Σ|x|·|w| (the scale of the rounding errors of any summation
// order), generous enough for f32 accumulation and tight enough that one
// wrong element among thousands fails.
const mmRel = 2e-6

func TestMatMulDense(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(1, 2))
	shapes := [][3]int{{1, 1, 1}, {1, 7, 13}, {3, 33, 65}, {5, 17, 100}, {1, 64, 96}, {2, 9, 257}}
	for _, wdt := range []dtype.DType{dtype.F32, dtype.BF16, dtype.F16} {
		for _, io := range []dtype.DType{dtype.F32, dtype.BF16, dtype.F16} {
			for _, s := range shapes {
				m, n, k := s[0], s[1], s[2]
				t.Run(fmt.Sprintf("%s/io%s/%dx%dx%d", wdt, io, m, n, k), func(t *testing.T) {
					w := rounded(wdt, randVals(r, n*k, -1, 1))
					x := rounded(io, randNorm(r, m*k))
					wt := &kernels.Weight{Data: tensor(t, b, wdt, w, n, k), N: n, K: k}
					xt := tensor(t, b, io, x, m, k)
					yt := tensor(t, b, io, nil, m, n)
					if err := b.MatMul(yt, xt, wt); err != nil {
						t.Fatal(err)
					}
					want, mag := refMatMul(x, w, nil, m, n, k)
					rel := mmRel
					switch io {
					case dtype.BF16:
						rel = 1.0 / 128 // the output is rounded to bf16
					case dtype.F16:
						rel = 1.0 / 1024
					}
					within(t, "y", fetch(t, b, yt), want, mag, rel, 1e-30)
				})
			}
		}
	}
}

func TestMatMulQuantized(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, bits := range []int{2, 3, 4, 5, 6, 8} {
		for _, group := range []int{32, 64, 128} {
			for si, sdt := range []dtype.DType{dtype.BF16, dtype.F16, dtype.F32} {
				for _, m := range []int{1, 3, 9} { // 9 > fusedMaxPairs: the dequantizing path
					n, k := 13+si, group*(2+si)
					t.Run(fmt.Sprintf("q%d/g%d/%s/M%d", bits, group, sdt, m), func(t *testing.T) {
						qm := randQMat(r, n, k, bits, group, sdt)
						w := qm.upload(t, b, sdt)
						x := rounded(dtype.F32, randNorm(r, m*k))
						xt := tensor(t, b, dtype.F32, x, m, k)
						yt := tensor(t, b, dtype.F32, nil, m, n)
						if err := b.MatMul(yt, xt, w); err != nil {
							t.Fatal(err)
						}
						want, mag := refMatMul(x, qm.dense(), qm.absDense(), m, n, k)
						within(t, "y", fetch(t, b, yt), want, mag, mmRel, 1e-30)
					})
				}
			}
		}
	}
}

// TestMatMulGemmaShapes checks the real Gemma 4 26B-A4B decode shapes (M=1) at
// 4 and 8 bits, group 64, on a sample of output rows.
func TestMatMulGemmaShapes(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(5, 6))
	shapes := [][2]int{{2816, 2112}, {2112, 2816}, {2816, 4096}, {2816, 2048}, {704, 2816}}
	for _, bits := range []int{4, 8} {
		for _, s := range shapes {
			k, n := s[0], s[1]
			t.Run(fmt.Sprintf("q%d/%d->%d", bits, k, n), func(t *testing.T) {
				qm := randQMat(r, n, k, bits, 64, dtype.BF16)
				w := qm.upload(t, b, dtype.BF16)
				x := rounded(dtype.F32, randNorm(r, k))
				xt := tensor(t, b, dtype.F32, x, 1, k)
				yt := tensor(t, b, dtype.F32, nil, 1, n)
				if err := b.MatMul(yt, xt, w); err != nil {
					t.Fatal(err)
				}
				got := fetch(t, b, yt)
				// Reference on every 37th row (and the last).
				var rows []int
				for c := 0; c < n; c += 37 {
					rows = append(rows, c)
				}
				rows = append(rows, n-1)
				sub := &qmat{n: 1, k: k, bits: bits, group: 64}
				wpr, gpr := k*bits/32, k/64
				for _, c := range rows {
					sub.words = qm.words[c*wpr : (c+1)*wpr]
					sub.scales, sub.biases = qm.scales[c*gpr:(c+1)*gpr], qm.biases[c*gpr:(c+1)*gpr]
					want, mag := refMatMul(x, sub.dense(), sub.absDense(), 1, 1, k)
					within(t, fmt.Sprintf("y[%d]", c), got[c:c+1], want, mag, mmRel, 1e-30)
				}
			})
		}
	}
}

// expertsCase builds a 3D weight of e experts [N, K] inside a larger
// allocation (a stride wider than one expert, as for a fused gate_up view) and
// returns it with each expert's dense float64 matrix and its |·| bound.
func expertsCase(t *testing.T, b *Backend, r *rand.Rand, e, n, k, bits, group int, wdt dtype.DType) (*kernels.Weight, [][]float64, [][]float64) {
	dense := make([][]float64, e)
	abs := make([][]float64, e)
	if bits == 0 {
		// [E, 2N, K] buffer; the weight views rows [N, 2N) of each expert.
		all := rounded(wdt, randVals(r, e*2*n*k, -1, 1))
		buf := tensor(t, b, wdt, all, e, 2*n, k)
		for i := range e {
			dense[i] = all[(2*i+1)*n*k : (2*i+2)*n*k]
		}
		data := buf
		data.Offset += int64(n * k * wdt.Size())
		data.Shape = []int{n, k}
		return &kernels.Weight{Data: data, N: n, K: k, Experts: e, DataStride: int64(2 * n * k * wdt.Size())}, dense, nil
	}
	sdt := wdt
	var words []uint32
	var scales, biases []float64
	for i := range e {
		qm := randQMat(r, n, k, bits, group, sdt)
		words = append(words, qm.words...)
		scales = append(scales, qm.scales...)
		biases = append(biases, qm.biases...)
		dense[i], abs[i] = qm.dense(), qm.absDense()
	}
	wpr, gpr := k*bits/32, k/group
	w := &kernels.Weight{
		Data:   rawTensor(t, b, dtype.U32, wordsBytes(words), e, n, wpr),
		Scales: tensor(t, b, sdt, scales, e, n, gpr),
		Biases: tensor(t, b, sdt, biases, e, n, gpr),
		Bits:   bits, Group: group, N: n, K: k, Experts: e,
		DataStride:  int64(n * wpr * 4),
		GroupStride: int64(n * gpr * sdt.Size()),
	}
	w.Data.Shape, w.Scales.Shape, w.Biases.Shape = []int{n, wpr}, []int{n, gpr}, []int{n, gpr}
	return w, dense, abs
}

func TestMatMulExperts(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(7, 8))
	type tc struct {
		bits, group int
		wdt         dtype.DType
	}
	cases := []tc{{0, 0, dtype.BF16}, {0, 0, dtype.F32}, {4, 64, dtype.BF16}, {8, 32, dtype.F32}, {3, 32, dtype.BF16}, {6, 128, dtype.F16}, {2, 64, dtype.BF16}, {5, 32, dtype.BF16}}
	const e, n = 6, 21
	for _, c := range cases {
		k := 128
		if c.bits == 0 {
			k = 75
		}
		w, dense, abs := expertsCase(t, b, r, e, n, k, c.bits, c.group, c.wdt)
		for _, m := range []int{1, 5, 16} { // M=16: some experts get more than fusedMaxPairs rows
			for _, perSlot := range []bool{false, true} {
				const slots = 3
				t.Run(fmt.Sprintf("q%d/g%d/%s/M%d/perSlot=%v", c.bits, c.group, c.wdt, m, perSlot), func(t *testing.T) {
					ids := make([]float64, m*slots)
					for i := range ids {
						ids[i] = float64(r.IntN(e))
					}
					ids[0] = float64(e - 1)
					xRows := m
					if perSlot {
						xRows = m * slots
					}
					x := rounded(dtype.F32, randNorm(r, xRows*k))
					xt := tensor(t, b, dtype.F32, x, xRows, k)
					it := tensor(t, b, dtype.I32, ids, m, slots)
					yt := tensor(t, b, dtype.F32, nil, m, slots, n)
					if err := b.MatMulExperts(yt, xt, w, it); err != nil {
						t.Fatal(err)
					}
					got := fetch(t, b, yt)
					for i := range m * slots {
						xr := i / slots
						if perSlot {
							xr = i
						}
						ex := int(ids[i])
						var absw []float64
						if abs != nil {
							absw = abs[ex]
						}
						want, mag := refMatMul(x[xr*k:(xr+1)*k], dense[ex], absw, 1, n, k)
						within(t, fmt.Sprintf("slot %d (expert %d)", i, ex), got[i*n:(i+1)*n], want, mag, mmRel, 1e-30)
					}
				})
			}
		}
	}
}

// TestMatMulExpertsMatchesExpert checks MatMulExperts against MatMul on
// Weight.Expert views (the host-offset variant).
func TestMatMulExpertsMatchesExpert(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(9, 10))
	w, _, _ := expertsCase(t, b, r, 4, 16, 64, 4, 32, dtype.BF16)
	x := randNorm(r, 64)
	xt := tensor(t, b, dtype.F32, x, 1, 64)
	it := tensor(t, b, dtype.I32, []float64{2, 0, 3}, 1, 3)
	yt := tensor(t, b, dtype.F32, nil, 1, 3, 16)
	if err := b.MatMulExperts(yt, xt, w, it); err != nil {
		t.Fatal(err)
	}
	got := fetch(t, b, yt)
	for j, e := range []int{2, 0, 3} {
		we, err := w.Expert(e)
		if err != nil {
			t.Fatal(err)
		}
		y1 := tensor(t, b, dtype.F32, nil, 1, 16)
		if err := b.MatMul(y1, xt, &we); err != nil {
			t.Fatal(err)
		}
		for i, v := range fetch(t, b, y1) {
			if v != got[j*16+i] {
				t.Fatalf("slot %d row %d: MatMulExperts %v, MatMul on Expert(%d) %v", j, i, got[j*16+i], e, v)
			}
		}
	}
}

// TestAllocs checks that the decode-time matmuls do not allocate in steady
// state.
func TestAllocs(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(11, 12))
	qm := randQMat(r, 256, 512, 4, 64, dtype.BF16)
	w := qm.upload(t, b, dtype.BF16)
	dw := &kernels.Weight{Data: tensor(t, b, dtype.BF16, randVals(r, 256*512, -1, 1), 256, 512), N: 256, K: 512}
	w3, _, _ := expertsCase(t, b, r, 16, 64, 512, 8, 64, dtype.BF16)
	x := tensor(t, b, dtype.F32, randNorm(r, 512), 1, 512)
	y := tensor(t, b, dtype.F32, nil, 1, 256)
	ids := tensor(t, b, dtype.I32, []float64{3, 1, 15, 0}, 1, 4)
	ye := tensor(t, b, dtype.F32, nil, 1, 4, 64)
	for name, f := range map[string]func() error{
		"MatMul/q4":     func() error { return b.MatMul(y, x, w) },
		"MatMul/bf16":   func() error { return b.MatMul(y, x, dw) },
		"MatMulExperts": func() error { return b.MatMulExperts(ye, x, w3, ids) },
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
		if a := testing.AllocsPerRun(50, func() { _ = f() }); a != 0 {
			t.Errorf("%s: %v allocs per call, want 0", name, a)
		}
	}
}

// TestKernelsAgree checks the specialized unpackers against the generic bit
// stream reader on random words, and repacking.
func TestUnpackRepack(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, bits := range []int{2, 3, 4, 5, 6, 8} {
		for _, k := range []int{32, 64, 96, 128} {
			words := make([]uint32, k*bits/32)
			for i := range words {
				words[i] = r.Uint32()
			}
			q := make([]float32, k)
			unpack(bits, words, q)
			ints := make([]int, k)
			for i, v := range q {
				if want := refQ(words, bits, i); float64(v) != float64(want) {
					t.Fatalf("%d bits, element %d: unpack %v, want %d", bits, i, v, want)
				}
				ints[i] = int(v)
			}
			for i, w := range refPack(ints, bits) {
				if w != words[i] {
					t.Fatalf("%d bits: repacked word %d = %#x, want %#x", bits, i, w, words[i])
				}
			}
			// The fused per-group sums with x = 1 are the sums of the values.
			ones := make([]float64, k)
			for i := range ones {
				ones[i] = 1
			}
			gs := make([]float64, k/32)
			qdot(bits, words, ones, gs, 32)
			for g := range gs {
				var s int
				for i := g * 32; i < (g+1)*32; i++ {
					s += refQ(words, bits, i)
				}
				if math.Abs(float64(gs[g])-float64(s)) > 0 {
					t.Fatalf("%d bits: group %d sum %v, want %d", bits, g, gs[g], s)
				}
			}
		}
	}
}
