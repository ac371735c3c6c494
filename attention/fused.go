package attention

import (
	"fmt"

	"github.com/gemmoe/gemmoe/kernels"
)

// ForwardFused is Forward on x = input_layernorm(h) through a backend that
// fuses ops (kernels.Fuser): the norm rides on the q/k/v projections, and
// q_norm, k_norm, v_norm, RoPE and the cache stores run as one op. It
// computes what RMSNorm(x, h, norm) followed by Forward(x) computes.
func ForwardFused(b kernels.Backend, f kernels.Fuser, out, h kernels.Tensor, norm kernels.NormParams, positions kernels.Tensor,
	w *Weights, s Spec, cache *Cache, sc *Scratch) error {
	T := h.Rows()
	if T > sc.Rows {
		return fmt.Errorf("attention: %d tokens exceed the scratch of %d", T, sc.Rows)
	}
	qd, kvd := s.Heads*s.HeadDim, s.KVHeads*s.HeadDim
	q := view(sc.q, T, qd)
	var k, v kernels.Tensor
	ys, ws := []kernels.Tensor{q}, []*kernels.Weight{w.Q}
	if w.K != nil {
		k, v = view(sc.k, T, kvd), view(sc.v, T, kvd)
		ys, ws = append(ys, k), append(ws, w.K)
		if !s.KEqV {
			ys, ws = append(ys, v), append(ws, w.V)
		}
	}
	if err := f.NormMatMul(ys, ws, h, norm, 0); err != nil {
		return fmt.Errorf("q/k/v_proj: %w", err)
	}
	p := kernels.AttentionPrepParams{QNorm: w.QNorm, KNorm: w.KNorm, Positions: positions, InvFreq: s.InvFreq,
		KCache: cache.K, VCache: cache.V, Heads: s.Heads, KVHeads: s.KVHeads, HeadDim: s.HeadDim, KEqV: s.KEqV, Eps: s.Eps}
	if err := f.AttentionPrep(q, k, v, p); err != nil {
		return fmt.Errorf("q/k/v norms, rope, cache: %w", err)
	}
	o := view(sc.o, T, qd)
	ap := kernels.AttentionParams{Heads: s.Heads, KVHeads: s.KVHeads, HeadDim: s.HeadDim, Window: s.Window, Scale: 1}
	if err := b.Attention(o, q, cache.K, cache.V, positions, ap); err != nil {
		return fmt.Errorf("attention: %w", err)
	}
	if err := b.MatMul(out, o, w.O); err != nil {
		return fmt.Errorf("o_proj: %w", err)
	}
	return nil
}
