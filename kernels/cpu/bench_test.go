package cpu

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Benchmarks of the decode-time (M=1) matmuls at the real Gemma 4 26B-A4B
// shapes. Each reports the weight bytes read per second (SetBytes) and bw_frac,
// that rate divided by the memory read bandwidth. The bandwidth is measured
// in the same process right before and right after each benchmark's timed
// loop (best of a few passes over 512 MiB each time) and the larger value is
// used (bw_GB/s), so that a change of load from other processes during a run
// cannot inflate the fraction. The weights are replicated over at least 256
// MiB and the copies used in turn, so that they come from memory, not the
// caches, as they do in a real model, and are mapped with huge pages where
// the OS grants them (benchBytes), as a model file's mapping is.

var (
	bwOnce sync.Once
	bwBuf  []uint64
	bwVal  float64 // the last measurement
)

// readBandwidth measures the read bandwidth now (and prints the first
// measurement).
func readBandwidth(b *testing.B) float64 {
	bwOnce.Do(func() {
		bwBuf = make([]uint64, 512<<20/8)
		for i := range bwBuf {
			bwBuf[i] = uint64(i)
		}
		fmt.Printf("memory read bandwidth: %.2f GB/s\n", measureReadBandwidth(bwBuf, 6)/1e9)
	})
	bwVal = measureReadBandwidth(bwBuf, 4)
	return bwVal
}

var benchSpan = int64(256 << 20) // bytes of weight copies to cycle through

// benchFormat is a weight format: dense dtype (bits 0) or quantized bits.
type benchFormat struct {
	name string
	bits int
	wdt  dtype.DType
}

var (
	fmtQ4   = benchFormat{"q4g64", 4, dtype.U32}
	fmtQ8   = benchFormat{"q8g64", 8, dtype.U32}
	fmtBF16 = benchFormat{"bf16", 0, dtype.BF16}
)

// fillRandom fills p with pseudo-random bytes.
func fillRandom(p []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 99))
	for len(p) >= 8 {
		v := r.Uint64()
		*(*uint64)(unsafe.Pointer(&p[0])) = v
		p = p[8:]
	}
}

// fillBF16 fills p with bf16 values in [-a, a).
func fillBF16(p []byte, a float32, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	u := asU16(p)
	for i := range u {
		u[i] = dtype.F32ToBF16(a * (2*r.Float32() - 1))
	}
}

// benchWeights allocates `copies` consecutive [experts, n, k] weights of format
// f and returns copy c's weight (3D when experts > 0) through get, and the
// bytes of one expert (or one 2D weight).
func benchWeights(b *testing.B, be *Backend, f benchFormat, experts, n, k int) (get func(c int) *kernels.Weight, copies int, perMatrix int64) {
	e := max(experts, 1)
	var dataBytes, groupBytes int64
	if f.bits == 0 {
		dataBytes = int64(n) * int64(k) * 2
	} else {
		dataBytes = int64(n) * int64(k) * int64(f.bits) / 8
		groupBytes = int64(n) * int64(k/64) * 2
	}
	perMatrix = dataBytes + 2*groupBytes
	copies = max(1, int((benchSpan+perMatrix*int64(e)-1)/(perMatrix*int64(e))))
	total := copies * e
	var data, scales, biases kernels.Tensor
	raw, unmap, err := benchBytes(int64(total) * dataBytes)
	if err != nil {
		b.Fatal(err)
	}
	buf, err := be.WrapHost(raw)
	if err != nil {
		b.Fatal(err)
	}
	if f.bits == 0 {
		data = kernels.Tensor{Buf: buf, DType: dtype.BF16, Shape: []int{total, n, k}}
	} else {
		data = kernels.Tensor{Buf: buf, DType: dtype.U32, Shape: []int{total, n, k * f.bits / 32}}
	}
	if f.bits == 0 {
		fillBF16(raw[:dataBytes], 0.05, 1)
	} else {
		fillRandom(raw[:dataBytes], 1)
		scales, _ = be.Alloc(dtype.BF16, total, n, k/64)
		biases, _ = be.Alloc(dtype.BF16, total, n, k/64)
		sr, _ := be.raw(scales, "", true)
		br, _ := be.raw(biases, "", true)
		fillBF16(sr[:groupBytes], 0.01, 2)
		fillBF16(br[:groupBytes], 0.05, 3)
		for i := 1; i < total; i++ {
			copy(sr[int64(i)*groupBytes:], sr[:groupBytes])
			copy(br[int64(i)*groupBytes:], br[:groupBytes])
		}
	}
	for i := 1; i < total; i++ {
		copy(raw[int64(i)*dataBytes:], raw[:dataBytes])
	}
	b.Cleanup(func() { be.Free(data); be.Free(scales); be.Free(biases); unmap() })
	ws := make([]*kernels.Weight, copies)
	for c := range ws {
		w := &kernels.Weight{Data: data, Scales: scales, Biases: biases, N: n, K: k}
		if f.bits != 0 {
			w.Bits, w.Group = f.bits, 64
		}
		base := int64(c * e)
		w.Data.Offset = base * dataBytes
		w.Data.Shape = data.Shape[1:]
		if f.bits != 0 {
			w.Scales.Offset, w.Biases.Offset = base*groupBytes, base*groupBytes
			w.Scales.Shape, w.Biases.Shape = scales.Shape[1:], biases.Shape[1:]
		}
		if experts > 0 {
			w.Experts, w.DataStride, w.GroupStride = experts, dataBytes, groupBytes
		}
		ws[c] = w
	}
	return func(c int) *kernels.Weight { return ws[c%copies] }, copies, perMatrix
}

// report adds bw_frac: the weight-read rate of the timed loop over the
// larger of the bandwidth measured before it (readBandwidth, which the
// benchmark calls first) and after it.
func report(b *testing.B, bytesPerOp int64) {
	rate := float64(bytesPerOp) * float64(b.N) / b.Elapsed().Seconds()
	before := bwVal
	b.StopTimer()
	bw := max(before, readBandwidth(b))
	b.ReportMetric(rate/bw, "bw_frac")
	b.ReportMetric(bw/1e9, "bw_GB/s")
}

func BenchmarkMatMul(b *testing.B) {
	type shape struct {
		what string
		k, n int
	}
	shapes := []shape{
		{"mlp_gate_up", 2816, 2112}, {"mlp_down", 2112, 2816},
		{"attn_q_sliding", 2816, 4096}, {"attn_kv_sliding", 2816, 2048},
		{"attn_q_full", 2816, 8192}, {"attn_kv_full", 2816, 1024},
	}
	be := New()
	defer be.Close()
	for _, f := range []benchFormat{fmtQ4, fmtQ8, fmtBF16} {
		for _, s := range shapes {
			if f.bits == 0 && s.what != "mlp_gate_up" && s.what != "mlp_down" {
				continue
			}
			b.Run(fmt.Sprintf("%s/%s/%dx%d", f.name, s.what, s.k, s.n), func(b *testing.B) {
				get, _, per := benchWeights(b, be, f, 0, s.n, s.k)
				x, _ := be.Alloc(dtype.F32, 1, s.k)
				y, _ := be.Alloc(dtype.F32, 1, s.n)
				xr, _ := be.raw(x, "", true)
				for i, xv := 0, asF32(xr); i < len(xv); i++ {
					xv[i] = float32(i%17) - 8
				}
				b.SetBytes(per)
				b.ReportAllocs()
				readBandwidth(b)
				b.ResetTimer()
				for i := range b.N {
					if err := be.MatMul(y, x, get(i)); err != nil {
						b.Fatal(err)
					}
				}
				report(b, per)
			})
		}
	}
}

func BenchmarkMatMulExperts(b *testing.B) {
	be := New()
	defer be.Close()
	const experts, slots = 128, 8
	for _, f := range []benchFormat{fmtQ4, fmtQ8} {
		for _, s := range [][2]int{{2816, 704}, {704, 2816}} {
			k, n := s[0], s[1]
			b.Run(fmt.Sprintf("%s/%dof%d/%dx%d", f.name, slots, experts, k, n), func(b *testing.B) {
				get, _, per := benchWeights(b, be, f, experts, n, k)
				x, _ := be.Alloc(dtype.F32, 1, k)
				y, _ := be.Alloc(dtype.F32, 1, slots, n)
				r := rand.New(rand.NewPCG(5, 5))
				var idSets []kernels.Tensor
				for range 64 {
					ids, _ := be.Alloc(dtype.I32, 1, slots)
					raw, _ := be.raw(ids, "", true)
					for j, perm := 0, r.Perm(experts); j < slots; j++ {
						asI32(raw)[j] = int32(perm[j])
					}
					idSets = append(idSets, ids)
				}
				b.SetBytes(per * slots)
				b.ReportAllocs()
				readBandwidth(b)
				b.ResetTimer()
				for i := range b.N {
					if err := be.MatMulExperts(y, x, get(i), idSets[i%len(idSets)]); err != nil {
						b.Fatal(err)
					}
				}
				report(b, per*slots)
			})
		}
	}
}

func BenchmarkMatMulLMHead(b *testing.B) {
	be := New()
	defer be.Close()
	for _, f := range []benchFormat{fmtQ4, fmtQ8} {
		b.Run(fmt.Sprintf("%s/2816x262144", f.name), func(b *testing.B) {
			get, _, per := benchWeights(b, be, f, 0, 262144, 2816)
			x, _ := be.Alloc(dtype.F32, 1, 2816)
			y, _ := be.Alloc(dtype.F32, 1, 262144)
			b.SetBytes(per)
			b.ReportAllocs()
			readBandwidth(b)
			b.ResetTimer()
			for i := range b.N {
				if err := be.MatMul(y, x, get(i)); err != nil {
					b.Fatal(err)
				}
			}
			report(b, per)
		})
	}
}

// BenchmarkMatMulPrefill measures the M>1 paths (64 tokens): a dense MLP
// projection and the expert projection with the slots grouped by expert. It
// reports GFLOP/s (2·M·N·K per call, all slots for the experts).
func BenchmarkMatMulPrefill(b *testing.B) {
	be := New()
	defer be.Close()
	const m, experts, slots = 64, 128, 8
	for _, f := range []benchFormat{fmtQ4, fmtBF16} {
		b.Run(fmt.Sprintf("%s/M%d/2816x2112", f.name, m), func(b *testing.B) {
			get, _, _ := benchWeights(b, be, f, 0, 2112, 2816)
			x, _ := be.Alloc(dtype.F32, m, 2816)
			y, _ := be.Alloc(dtype.F32, m, 2112)
			b.ResetTimer()
			for i := range b.N {
				if err := be.MatMul(y, x, get(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*m*2112*2816*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
	b.Run(fmt.Sprintf("q4g64/experts/M%d/%dof%d/2816x704", m, slots, experts), func(b *testing.B) {
		get, _, _ := benchWeights(b, be, fmtQ4, experts, 704, 2816)
		x, _ := be.Alloc(dtype.F32, m, 2816)
		y, _ := be.Alloc(dtype.F32, m, slots, 704)
		ids, _ := be.Alloc(dtype.I32, m, slots)
		raw, _ := be.raw(ids, "", true)
		r := rand.New(rand.NewPCG(6, 6))
		for t := range m {
			for j, e := range r.Perm(experts)[:slots] {
				asI32(raw)[t*slots+j] = int32(e)
			}
		}
		b.ResetTimer()
		for i := range b.N {
			if err := be.MatMulExperts(y, x, get(i), ids); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(2*m*slots*704*2816*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
}

// BenchmarkGeluTanhMul times y = gelu_tanh(gate)·up at the sizes decode and
// a 64-token prompt give it (the dense MLP's 2112, the 8 experts' 8·704;
// 64 tokens of those), with the backend's kernels and with the generic
// loop (math.Tanh in float64), in ns an element.
func BenchmarkGeluTanhMul(b *testing.B) {
	for _, kind := range []string{"simd", "generic"} {
		var opts []Option
		if kind == "generic" {
			opts = append(opts, WithGeneric())
		}
		be := newBackend(b, opts...)
		for _, n := range []int{2112, 8 * 704, 64 * 8 * 704} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				y, _ := be.Alloc(dtype.F32, n)
				g, _ := be.Alloc(dtype.F32, n)
				u, _ := be.Alloc(dtype.F32, n)
				gr, _ := be.raw(g, "", true)
				ur, _ := be.raw(u, "", true)
				rg, ru := rand.New(rand.NewPCG(4, 5)), rand.New(rand.NewPCG(6, 7))
				gf, uf := asF32(gr), asF32(ur)
				for i := range gf {
					gf[i] = float32(rg.NormFloat64() * 2)
					uf[i] = float32(ru.NormFloat64())
				}
				b.ResetTimer()
				for range b.N {
					if err := be.GeluTanhMul(y, g, u); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/elem")
			})
		}
	}
}
