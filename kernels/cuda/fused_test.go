package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// The fused ops are checked against the plain sequence they replace
// (kernels.Unfused) on the same backend; the plain ops are checked against
// float64 references elsewhere. With f32 activations the two differ only by
// the order of the norms' sums; with bf16 a rounding of the normed input can
// flip by one unit.

func fusedCases(t *testing.T) []beCase {
	f32, bf := gpus(t)
	t.Logf("programmatic dependent launch: %v", bf.PDL())
	return []beCase{{"cuda-f32", f32, dtype.F32, 2e-5}, {"cuda-bf16", bf, dtype.BF16, 1.6e-2},
		{"cuda-bf16-tc", gpuBF16TC, dtype.BF16, 1.6e-2}}
}

// compareFused runs op once through the backend's fused op and once through
// kernels.Unfused on fresh copies of the inputs and compares the outputs
// that outs picks from the inputs.
func compareFused(t *testing.T, opName string, c beCase, inputs func() []kernels.Tensor,
	op func(f kernels.Fuser, in []kernels.Tensor) error, outs []int) {
	t.Helper()
	be := c.be.(*Backend)
	a, b := inputs(), inputs()
	if err := op(be, a); err != nil {
		t.Fatalf("%s on %s: %v", opName, c.name, err)
	}
	if err := op(kernels.Unfused{Backend: be}, b); err != nil {
		t.Fatalf("%s (unfused) on %s: %v", opName, c.name, err)
	}
	for _, i := range outs {
		got, ref := get(t, be, a[i]), get(t, be, b[i])
		want := make([]float64, len(ref))
		for j, v := range ref {
			want[j] = float64(v)
		}
		check(t, fmt.Sprintf("%s output %d", opName, i), c, got, want)
	}
}

func TestFusedNormMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	type wspec struct{ bits, n, group int }
	for _, tc := range []struct {
		M       int
		ws      []wspec
		xdt     dtype.DType // the normed x's type (0: activations)
		scale   float32
		softcap float32
		noNorm  bool // no norm weight
		K       int  // 0: 256
	}{
		{1, []wspec{{8, 128, 64}}, dtype.F32, 0.0625, 0, false, 2816},                // the real router shape
		{1, []wspec{{4, 128, 64}, {4, 64, 64}, {4, 64, 64}}, 0, 0, 0, false, 0},      // q, k, v
		{1, []wspec{{4, 4096, 64}, {4, 2048, 64}, {4, 2048, 64}}, 0, 0, 0, false, 0}, // real q, k, v rows: 4 rows per warp
		{1, []wspec{{4, 128, 64}, {4, 64, 64}, {6, 64, 64}}, 0, 0, 0, false, 0},      // a slow weight
		{1, []wspec{{8, 16, 64}}, dtype.F32, 0.0625, 0, false, 0},                    // the router
		{1, []wspec{{4, 90, 64}}, 0, 0, 30, false, 0},                                // a head with softcap, odd rows
		{1, []wspec{{4, 90, 64}}, 0, 0, 30, false, 2816},                             // few long rows: warps share a row
		{1, []wspec{{4, 64, 64}, {4, 32, 64}, {4, 32, 64}}, 0, 0, 0, false, 2816},    // the same over segments
		{1, []wspec{{4, 32, 32}, {4, 32, 32}, {4, 32, 32}, {4, 32, 32}, {4, 8, 32}, {8, 16, 32}}, 0, 0, 0, true, 0},
		{3, []wspec{{4, 64, 64}, {8, 32, 64}}, 0, 0, 0, false, 0}, // several tokens: the plain path
	} {
		K := tc.K
		if K == 0 {
			K = 256
		}
		qws := make([]*qweight, len(tc.ws))
		for i, s := range tc.ws {
			qws[i] = newQWeight(r, 0, s.n, K, s.bits, s.group, dtype.BF16)
		}
		x := randn(r, tc.M*K, 1)
		nw := randn(r, K, 0.5)
		for _, c := range fusedCases(t) {
			ws := make([]*kernels.Weight, len(qws))
			for i, q := range qws {
				ws[i] = q.upload(t, c.be, false, 0)
			}
			xdt := tc.xdt
			if xdt == 0 {
				xdt = c.act
			}
			np := kernels.NormParams{Eps: 1e-6, Scale: tc.scale, XDType: xdt}
			if !tc.noNorm {
				np.Weight = put(t, c.be, dtype.F32, nw, K)
			}
			ydt := c.act
			if tc.xdt == dtype.F32 {
				ydt = dtype.F32
			}
			inputs := func() []kernels.Tensor {
				in := []kernels.Tensor{put(t, c.be, c.act, x, tc.M, K)}
				for _, s := range tc.ws {
					in = append(in, poisoned(t, c.be, ydt, tc.M, s.n))
				}
				return in
			}
			outs := make([]int, len(tc.ws))
			for i := range outs {
				outs[i] = i + 1
			}
			// Each count of warps a row (by shape: 0) for the one-row kernels.
			for _, ks := range []int{0, 2, 4, 8} {
				func() {
					be := c.be.(*Backend)
					be.mvKS = ks
					defer func() { be.mvKS = 0 }()
					compareFused(t, name("NormMatMul", tc.M, tc.ws, "ks", ks), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
						return f.NormMatMul(in[1:], ws, in[0], np, tc.softcap)
					}, outs)
				}()
			}
			// x already normed (kernels.NormOut): the plain products.
			compareFused(t, name("NormMatMul prenormed", tc.M, tc.ws), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.NormMatMul(in[1:], ws, in[0], kernels.NormParams{Off: true}, tc.softcap)
			}, outs)
		}
	}
}

func TestFusedNormGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	for _, tc := range []struct {
		bits, E, k, M, N, K int
	}{
		{4, 0, 0, 1, 96, 256},
		{8, 0, 0, 1, 64, 512},
		{4, 0, 0, 4, 96, 256}, // several tokens: the plain path
		{4, 8, 3, 1, 96, 256},
		{4, 8, 3, 2, 64, 256},
		{8, 8, 2, 1, 64, 512},
		{3, 8, 2, 1, 64, 256}, // 3 bits: the plain path
		{4, 128, 8, 1, 704, 2816},
		{4, 8, 3, 40, 96, 256},     // several tokens, 15 pairs an expert: the GLU GEMM (bf16)
		{8, 16, 4, 50, 64, 512},    // the same at 8 bits
		{4, 0, 0, 600, 896, 256},   // a dense GLU GEMM of 140 tiles
		{4, 128, 8, 20, 704, 2816}, // 1.25 pairs an expert: matrix-vector products
	} {
		gw := newQWeight(r, tc.E, tc.N, tc.K, tc.bits, 64, dtype.BF16)
		uw := newQWeight(r, tc.E, tc.N, tc.K, tc.bits, 64, dtype.BF16)
		x := randn(r, tc.M*tc.K, 1)
		nw := randn(r, tc.K, 0.5)
		var ids []int32
		for range tc.M {
			for _, e := range r.Perm(max(tc.E, 1))[:max(tc.k, 1)] {
				ids = append(ids, int32(e))
			}
		}
		for _, c := range fusedCases(t) {
			g, u := gw.upload(t, c.be, false, 0), uw.upload(t, c.be, false, 0)
			np := kernels.NormParams{Weight: put(t, c.be, dtype.F32, nw, tc.K), Eps: 1e-6, XDType: c.act}
			var idt kernels.Tensor
			yshape := []int{tc.M, tc.N}
			if tc.E > 0 {
				idt = putRaw(t, c.be, dtype.I32, i32bytes(ids), tc.M, tc.k)
				yshape = []int{tc.M, tc.k, tc.N}
			}
			inputs := func() []kernels.Tensor {
				return []kernels.Tensor{put(t, c.be, c.act, x, tc.M, tc.K), poisoned(t, c.be, c.act, yshape...)}
			}
			compareFused(t, name("NormGLU", tc), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.NormGLU(in[1], g, u, idt, in[0], np)
			}, []int{1})
			compareFused(t, name("NormGLU prenormed", tc), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.NormGLU(in[1], g, u, idt, in[0], kernels.NormParams{Off: true})
			}, []int{1})
		}
	}
}

func TestFusedAttentionPrep(t *testing.T) {
	r := rand.New(rand.NewPCG(45, 46))
	for _, tc := range []struct {
		T, H, KVH, D, cap int
		keqv, shared      bool
		partial           bool // a quarter of the pairs rotate (proportional RoPE)
	}{
		{1, 4, 2, 64, 16, false, false, false},
		{3, 4, 2, 64, 16, false, false, false},
		{1, 4, 1, 128, 40, true, false, true},
		{2, 16, 8, 256, 40, false, false, false},
		{1, 16, 2, 512, 40, true, false, true},
		{1, 4, 2, 64, 16, false, true, false},
	} {
		qv := randn(r, tc.T*tc.H*tc.D, 1)
		kv := randn(r, tc.T*tc.KVH*tc.D, 1)
		vv := randn(r, tc.T*tc.KVH*tc.D, 1)
		kcv := randn(r, tc.cap*tc.KVH*tc.D, 1)
		vcv := randn(r, tc.cap*tc.KVH*tc.D, 1)
		qn, kn := randn(r, tc.D, 0.5), randn(r, tc.D, 0.5)
		inv := make([]float32, tc.D/2)
		for i := range inv {
			if !tc.partial || i < tc.D/8 {
				inv[i] = float32(math.Pow(1e4, -2*float64(i)/float64(tc.D)))
			}
		}
		pos := make([]int32, tc.T)
		for i := range pos {
			pos[i] = int32(37 + i)
		}
		for _, c := range fusedCases(t) {
			p := kernels.AttentionPrepParams{
				QNorm: put(t, c.be, dtype.F32, qn, tc.D), KNorm: put(t, c.be, dtype.F32, kn, tc.D),
				Positions: putRaw(t, c.be, dtype.I32, i32bytes(pos), tc.T), InvFreq: put(t, c.be, dtype.F32, inv, tc.D/2),
				Heads: tc.H, KVHeads: tc.KVH, HeadDim: tc.D, KEqV: tc.keqv, Eps: 1e-6,
			}
			inputs := func() []kernels.Tensor {
				return []kernels.Tensor{put(t, c.be, c.act, qv, tc.T, tc.H*tc.D), put(t, c.be, c.act, kv, tc.T, tc.KVH*tc.D),
					put(t, c.be, c.act, vv, tc.T, tc.KVH*tc.D), put(t, c.be, c.act, kcv, tc.cap, tc.KVH*tc.D),
					put(t, c.be, c.act, vcv, tc.cap, tc.KVH*tc.D)}
			}
			outs := []int{0, 1, 2, 3, 4}
			if tc.shared {
				outs = []int{0}
			}
			compareFused(t, name("AttentionPrep", tc), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				p := p
				p.KCache, p.VCache = in[3], in[4]
				if tc.shared {
					return f.AttentionPrep(in[0], kernels.Tensor{}, kernels.Tensor{}, p)
				}
				return f.AttentionPrep(in[0], in[1], in[2], p)
			}, outs)
		}
	}
}

func TestFusedResidual(t *testing.T) {
	r := rand.New(rand.NewPCG(47, 48))
	for _, tc := range []struct {
		M, N, k int
		scale   float32
	}{
		{1, 256, 4, 1}, {2, 256, 4, 0.75}, {1, 2816, 8, 1}, {3, 96, 2, 1.5},
	} {
		h, a := randn(r, tc.M*tc.N, 1), randn(r, tc.M*tc.N, 1)
		down := randn(r, tc.M*tc.k*tc.N, 1)
		wts := make([]float32, tc.M*tc.k)
		for i := range wts {
			wts[i] = r.Float32()
		}
		w1, w2, wf := randn(r, tc.N, 0.5), randn(r, tc.N, 0.5), randn(r, tc.N, 0.5)
		for _, c := range fusedCases(t) {
			wt := put(t, c.be, dtype.F32, wts, tc.M, tc.k)
			p := kernels.MoEEpilogueParams{Post1: put(t, c.be, dtype.F32, w1, tc.N), Post2: put(t, c.be, dtype.F32, w2, tc.N),
				PostFF: put(t, c.be, dtype.F32, wf, tc.N), Eps: 1e-6, Scale: tc.scale}
			inputs := func() []kernels.Tensor {
				return []kernels.Tensor{put(t, c.be, c.act, h, tc.M, tc.N), put(t, c.be, c.act, a, tc.M, tc.N),
					put(t, c.be, c.act, down, tc.M, tc.k, tc.N)}
			}
			compareFused(t, name("AddRMSNorm", tc), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.AddRMSNorm(in[0], in[1], p.Post1, 1e-6, tc.scale)
			}, []int{0})
			compareFused(t, name("MoEEpilogue", tc), c, inputs, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.MoEEpilogue(in[0], in[1], in[2], wt, p)
			}, []int{0})
			// With normed copies of the new h (kernels.NormOut): in the
			// activation type, in F32 scaled as the router's, and without
			// a weight.
			withOuts := func() []kernels.Tensor {
				zeros := make([]float32, tc.M*tc.N)
				return append(inputs(), put(t, c.be, c.act, zeros, tc.M, tc.N), put(t, c.be, dtype.F32, zeros, tc.M, tc.N),
					put(t, c.be, c.act, zeros, tc.M, tc.N))
			}
			normOuts := func(in []kernels.Tensor) []kernels.NormOut {
				return []kernels.NormOut{
					{Y: in[3], Norm: kernels.NormParams{Weight: p.Post2, Eps: 1e-6}},
					{Y: in[4], Norm: kernels.NormParams{Weight: p.PostFF, Eps: 1e-5, Scale: 0.0625}},
					{Y: in[5], Norm: kernels.NormParams{Eps: 1e-6}},
				}
			}
			compareFused(t, name("AddRMSNorm outs", tc), c, withOuts, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.AddRMSNorm(in[0], in[1], p.Post1, 1e-6, tc.scale, normOuts(in)...)
			}, []int{0, 3, 4, 5})
			compareFused(t, name("MoEEpilogue outs", tc), c, withOuts, func(f kernels.Fuser, in []kernels.Tensor) error {
				return f.MoEEpilogue(in[0], in[1], in[2], wt, p, normOuts(in)...)
			}, []int{0, 3, 4, 5})
		}
	}
}
