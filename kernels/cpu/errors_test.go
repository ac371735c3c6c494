package cpu

import (
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

type foreignBuffer struct{}

func (foreignBuffer) Len() int64 { return 1 << 20 }

// TestErrors checks that each invalid argument gets an error that names the
// problem (and no panic).
func TestErrors(t *testing.T) {
	b := newBackend(t)
	f32 := func(shape ...int) kernels.Tensor { return tensor(t, b, dtype.F32, nil, shape...) }
	i32 := func(vals []float64, shape ...int) kernels.Tensor { return tensor(t, b, dtype.I32, vals, shape...) }

	// A valid 4-bit weight [8, 64] (group 32) and a 3D one with 4 experts.
	q := &kernels.Weight{
		Data:   tensor(t, b, dtype.U32, nil, 8, 8),
		Scales: tensor(t, b, dtype.BF16, nil, 8, 2), Biases: tensor(t, b, dtype.BF16, nil, 8, 2),
		Bits: 4, Group: 32, N: 8, K: 64,
	}
	q3all := tensor(t, b, dtype.U32, nil, 4, 8, 8)
	s3all := tensor(t, b, dtype.BF16, nil, 4, 8, 2)
	q3 := &kernels.Weight{
		Data:   kernels.Tensor{Buf: q3all.Buf, DType: dtype.U32, Shape: []int{8, 8}},
		Scales: kernels.Tensor{Buf: s3all.Buf, DType: dtype.BF16, Shape: []int{8, 2}},
		Biases: kernels.Tensor{Buf: s3all.Buf, DType: dtype.BF16, Shape: []int{8, 2}},
		Bits:   4, Group: 32, N: 8, K: 64, Experts: 4, DataStride: 8 * 8 * 4, GroupStride: 8 * 2 * 2,
	}
	dense := &kernels.Weight{Data: tensor(t, b, dtype.BF16, nil, 8, 64), N: 8, K: 64}
	mod := func(w *kernels.Weight, f func(*kernels.Weight)) *kernels.Weight {
		c := *w
		f(&c)
		return &c
	}
	x, y := f32(1, 64), f32(1, 8)
	wrapped, err := b.WrapHost(make([]byte, 256))
	if err != nil {
		t.Fatal(err)
	}
	ro := kernels.Tensor{Buf: wrapped, DType: dtype.F32, Shape: []int{1, 8}}
	freed := f32(1, 64)
	b.Free(freed)
	kc, vc := f32(4, 16), f32(4, 16)
	att := kernels.AttentionParams{Heads: 4, KVHeads: 2, HeadDim: 8}

	cases := []struct {
		name, want string
		run        func() error
	}{
		{"Alloc invalid dtype", "invalid dtype", func() error { _, err := b.Alloc(dtype.Invalid, 2); return err }},
		{"Alloc negative", "negative dimension", func() error { _, err := b.Alloc(dtype.F32, 2, -1); return err }},
		{"Upload size", "Upload of 3 bytes", func() error { return b.Upload(x, make([]byte, 3)) }},
		{"Upload read-only", "read-only", func() error { return b.Upload(ro, make([]byte, 32)) }},
		{"Download size", "Download of", func() error { return b.Download(make([]byte, 5), x) }},
		{"foreign buffer", "not a cpu one", func() error {
			return b.MatMul(y, kernels.Tensor{Buf: foreignBuffer{}, DType: dtype.F32, Shape: []int{1, 64}}, q)
		}},
		{"zero tensor", "missing", func() error { return b.MatMul(y, kernels.Tensor{Shape: []int{1, 64}}, q) }},
		{"freed buffer", "freed buffer", func() error { return b.MatMul(y, freed, q) }},
		{"outside buffer", "outside its", func() error {
			v := x
			v.Offset = 8
			return b.MatMul(y, v, q)
		}},
		{"negative offset", "outside its", func() error {
			v := x
			v.Offset = -4
			return b.MatMul(y, v, q)
		}},
		{"MatMul x width", "columns", func() error { return b.MatMul(y, f32(1, 63), q) }},
		{"MatMul y shape", "should be [1, 8]", func() error { return b.MatMul(f32(1, 9), x, q) }},
		{"MatMul y read-only", "read-only", func() error { return b.MatMul(ro, x, q) }},
		{"MatMul x dtype", "must be F32, BF16 or F16", func() error { return b.MatMul(y, tensor(t, b, dtype.I32, nil, 1, 64), q) }},
		{"MatMul nil weight", "nil weight", func() error { return b.MatMul(y, x, nil) }},
		{"MatMul 3D weight", "use MatMulExperts", func() error { return b.MatMul(f32(1, 8), x, q3) }},
		{"bits 7", "7-bit", func() error { return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Bits = 7 })) }},
		{"group 48", "group 48", func() error { return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Group = 48 })) }},
		{"K not a multiple of group", "not a multiple", func() error {
			return b.MatMul(f32(1, 8), f32(1, 48), mod(q, func(w *kernels.Weight) { w.K = 48 }))
		}},
		{"packed dtype", "want U32", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Data = tensor(t, b, dtype.F32, nil, 8, 8) }))
		}},
		{"packed shape", "packed data", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Data = tensor(t, b, dtype.U32, nil, 8, 9) }))
		}},
		{"scales dtype", "scales/biases have dtype", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Scales = tensor(t, b, dtype.I32, nil, 8, 2) }))
		}},
		{"scales shape", "do not hold", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Biases = tensor(t, b, dtype.BF16, nil, 8, 3) }))
		}},
		{"scales vs biases dtype", "differ in dtype", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Biases = tensor(t, b, dtype.F32, nil, 8, 2) }))
		}},
		{"scales outside buffer", "outside its", func() error {
			return b.MatMul(y, x, mod(q, func(w *kernels.Weight) { w.Scales.Offset = 4 }))
		}},
		{"dense dtype", "dense weight has dtype", func() error {
			return b.MatMul(y, x, mod(dense, func(w *kernels.Weight) { w.Data = tensor(t, b, dtype.I32, nil, 8, 64) }))
		}},
		{"dense shape", "does not hold", func() error { return b.MatMul(y, x, mod(dense, func(w *kernels.Weight) { w.K = 63 })) }},
		{"dense with scales", "has scales", func() error {
			return b.MatMul(y, x, mod(dense, func(w *kernels.Weight) { w.Scales = q.Scales }))
		}},
		{"empty weight", "has shape", func() error { return b.MatMul(y, x, &kernels.Weight{}) }},

		{"MatMulExperts id too big", "ids[0, 1] = 4 is not an expert", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, q3, i32([]float64{0, 4}, 1, 2))
		}},
		{"MatMulExperts id negative", "= -1 is not an expert", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, q3, i32([]float64{-1, 0}, 1, 2))
		}},
		{"MatMulExperts ids dtype", "must be I32", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, q3, f32(1, 2))
		}},
		{"MatMulExperts 2D weight", "use MatMul", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, q, i32([]float64{0, 1}, 1, 2))
		}},
		{"MatMulExperts x rows", "should have 1 rows", func() error {
			return b.MatMulExperts(f32(1, 2, 8), f32(3, 64), q3, i32([]float64{0, 1}, 1, 2))
		}},
		{"MatMulExperts y", "should be [1, 2, 8]", func() error {
			return b.MatMulExperts(f32(1, 3, 8), x, q3, i32([]float64{0, 1}, 1, 2))
		}},
		{"MatMulExperts stride outside", "outside its", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, mod(q3, func(w *kernels.Weight) { w.DataStride *= 2 }), i32([]float64{0, 3}, 1, 2))
		}},
		{"MatMulExperts group stride outside", "outside its", func() error {
			return b.MatMulExperts(f32(1, 2, 8), x, mod(q3, func(w *kernels.Weight) { w.GroupStride *= 3 }), i32([]float64{0, 3}, 1, 2))
		}},

		{"MoECombine shape", "MoECombine: x", func() error { return b.MoECombine(f32(2, 8), f32(2, 3, 9), f32(2, 3)) }},
		{"MoECombine rows", "MoECombine: weights", func() error { return b.MoECombine(f32(2, 8), f32(2, 3, 8), f32(1, 3)) }},
		{"Embed id", "ids[1] = 8 is outside", func() error { return b.Embed(f32(2, 64), q, i32([]float64{0, 8}, 2), 1) }},
		{"Embed negative id", "ids[0] = -3 is outside", func() error { return b.Embed(f32(1, 64), dense, i32([]float64{-3}, 1), 1) }},
		{"Embed 3D", "experts", func() error { return b.Embed(f32(1, 64), q3, i32([]float64{0}, 1), 1) }},
		{"Embed y", "Embed: y", func() error { return b.Embed(f32(1, 65), q, i32([]float64{0}, 1), 1) }},
		{"RMSNorm weight", "does not match", func() error { return b.RMSNorm(x, x, f32(63), 1e-6) }},
		{"RMSNorm shape", "differ in shape", func() error { return b.RMSNorm(f32(2, 32), x, kernels.Tensor{}, 1e-6) }},
		{"RMSNorm eps", "eps", func() error { return b.RMSNorm(x, x, kernels.Tensor{}, -1) }},
		{"RoPE invFreq dtype", "must be F32", func() error {
			return b.RoPE(f32(2, 4, 8), i32([]float64{0, 1}, 2), tensor(t, b, dtype.BF16, nil, 4))
		}},
		{"RoPE x shape", "is not [2, heads, 8]", func() error { return b.RoPE(f32(2, 4, 6), i32([]float64{0, 1}, 2), f32(4)) }},
		{"RoPE positions dtype", "must be I32", func() error { return b.RoPE(f32(2, 4, 8), f32(2), f32(4)) }},
		{"RoPE read-only", "read-only", func() error {
			return b.RoPE(kernels.Tensor{Buf: wrapped, DType: dtype.F32, Shape: []int{1, 8}}, i32([]float64{0}, 1), f32(4))
		}},
		{"Add size", "differ in size", func() error { return b.Add(x, x, f32(1, 63)) }},
		{"GeluTanhMul size", "differ in size", func() error { return b.GeluTanhMul(f32(1, 63), x, x) }},
		{"Scale size", "differ in size", func() error { return b.Scale(f32(1, 63), x, 2) }},
		{"Softcap cap", "must be positive", func() error { return b.Softcap(x, x, 0) }},
		{"Softmax shape", "differ in shape", func() error { return b.Softmax(f32(2, 32), x) }},
		{"RouterTopK k", "k = 0", func() error { return b.RouterTopK(f32(1, 0), i32(nil, 1, 0), f32(1, 16), kernels.Tensor{}, 0) }},
		{"RouterTopK k > E", "k = 17", func() error {
			return b.RouterTopK(f32(1, 17), i32(nil, 1, 17), f32(1, 16), kernels.Tensor{}, 17)
		}},
		{"RouterTopK weights", "weights F32[1 3]", func() error { return b.RouterTopK(f32(1, 3), i32(nil, 1, 4), f32(1, 16), kernels.Tensor{}, 4) }},
		{"RouterTopK ids dtype", "must be I32", func() error { return b.RouterTopK(f32(1, 4), f32(1, 4), f32(1, 16), kernels.Tensor{}, 4) }},
		{"RouterTopK scale", "perExpertScale", func() error { return b.RouterTopK(f32(1, 4), i32(nil, 1, 4), f32(1, 16), f32(15), 4) }},
		{"StoreKV negative position", "negative", func() error { return b.StoreKV(kc, f32(1, 16), i32([]float64{-1}, 1)) }},
		{"StoreKV width", "should be [Capacity, 15]", func() error { return b.StoreKV(kc, f32(1, 15), i32([]float64{0}, 1)) }},
		{"StoreKV rows", "one row per position", func() error { return b.StoreKV(kc, f32(2, 16), i32([]float64{0}, 1)) }},
		{"Attention heads", "multiple of KV heads", func() error {
			return b.Attention(f32(1, 24), f32(1, 24), kc, vc, i32([]float64{0}, 1), kernels.AttentionParams{Heads: 3, KVHeads: 2, HeadDim: 8})
		}},
		{"Attention window", "negative", func() error {
			return b.Attention(f32(1, 32), f32(1, 32), kc, vc, i32([]float64{0}, 1), kernels.AttentionParams{Heads: 4, KVHeads: 2, HeadDim: 8, Window: -1})
		}},
		{"Attention full overflow", "needs the keys of positions 0..4 (5) but the cache holds 4", func() error {
			return b.Attention(f32(1, 32), f32(1, 32), kc, vc, i32([]float64{4}, 1), att)
		}},
		{"Attention window overflow", "needs the keys of positions 5..9 (5) but the cache holds 4", func() error {
			p := att
			p.Window = 5
			return b.Attention(f32(1, 32), f32(1, 32), kc, vc, i32([]float64{9}, 1), p)
		}},
		{"Attention ring overwritten by the same call", "whose cache slot holds position 4 of the same call", func() error {
			p := att
			p.Window = 3
			return b.Attention(f32(5, 32), f32(5, 32), kc, vc, i32([]float64{0, 1, 2, 3, 4}, 5), p)
		}},
		{"Attention negative position", "negative", func() error {
			return b.Attention(f32(1, 32), f32(1, 32), kc, vc, i32([]float64{-2}, 1), att)
		}},
		{"Attention q", "Attention: q", func() error { return b.Attention(f32(1, 32), f32(1, 24), kc, vc, i32([]float64{0}, 1), att) }},
		{"Attention capacities", "differ in capacity", func() error {
			return b.Attention(f32(1, 32), f32(1, 32), kc, f32(5, 16), i32([]float64{0}, 1), att)
		}},
		{"Attention cache dtype", "must be F32, BF16 or F16", func() error {
			return b.Attention(f32(1, 32), f32(1, 32), tensor(t, b, dtype.I32, nil, 4, 16), vc, i32([]float64{0}, 1), att)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			if err == nil {
				t.Fatalf("no error, want one containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}

	// After Close every op reports it.
	b.Close()
	for name, f := range map[string]func() error{
		"MatMul": func() error { return b.MatMul(y, x, q) },
		"Alloc":  func() error { _, err := b.Alloc(dtype.F32, 1); return err },
		"Sync":   b.Sync,
	} {
		if err := f(); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("%s after Close: %v, want a closed error", name, err)
		}
	}
}
