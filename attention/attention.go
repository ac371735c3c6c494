// Package attention is Gemma 4's self-attention block: q/k/v projections,
// q_norm and k_norm (weighted) and v_norm (unweighted), RoPE per layer type,
// K=V layers, sliding-window and full attention over a KV cache, GQA and the
// output projection.
package attention

import (
	"fmt"

	"github.com/gemmoe/gemmoe/kernels"
)

// Weights are one layer's attention weights on a backend. K and V are nil on
// KV-shared layers; V is nil on K=V layers (v comes from the raw k projection).
type Weights struct {
	Q, K, V, O   *kernels.Weight
	QNorm, KNorm kernels.Tensor // F32 [HeadDim]
}

// Spec is the shape of one layer's attention.
type Spec struct {
	Heads, KVHeads, HeadDim int
	Window                  int  // sliding window; 0 for full attention
	KEqV                    bool // values from the k projection
	Eps                     float32
	InvFreq                 kernels.Tensor // F32 [HeadDim/2]
}

// Scratch holds the activations one attention call needs for up to Rows
// tokens. Make it once per session with NewScratch.
type Scratch struct {
	Rows       int
	q, k, v, o kernels.Tensor
}

// NewScratch allocates scratch for up to rows tokens of the widest spec.
func NewScratch(b kernels.Backend, rows int, specs []Spec) (*Scratch, error) {
	var q, kv int
	for _, s := range specs {
		q = max(q, s.Heads*s.HeadDim)
		kv = max(kv, s.KVHeads*s.HeadDim)
	}
	s := &Scratch{Rows: rows}
	dt := b.ActivationDType()
	var err error
	for _, t := range []struct {
		dst  *kernels.Tensor
		cols int
	}{{&s.q, q}, {&s.k, kv}, {&s.v, kv}, {&s.o, q}} {
		if *t.dst, err = b.Alloc(dt, rows*t.cols); err != nil {
			s.Free(b)
			return nil, err
		}
	}
	return s, nil
}

// Free releases the scratch tensors.
func (s *Scratch) Free(b kernels.Backend) {
	for _, t := range []kernels.Tensor{s.q, s.k, s.v, s.o} {
		if !t.IsZero() {
			b.Free(t)
		}
	}
}

// view returns the first rows·cols elements of t shaped [rows, cols].
func view(t kernels.Tensor, rows, cols int) kernels.Tensor {
	t.Shape = kernels.Shape(rows, cols)
	return t
}

// Forward computes out [T, hidden] = attention(x [T, hidden]) for tokens at
// positions (an I32 tensor [T]), writing this layer's keys and values into
// cache first. Shared layers pass their donor's cache and no K/V weights.
func Forward(b kernels.Backend, out, x, positions kernels.Tensor, w *Weights, s Spec, cache *Cache, sc *Scratch) error {
	T := x.Rows()
	if T > sc.Rows {
		return fmt.Errorf("attention: %d tokens exceed the scratch of %d", T, sc.Rows)
	}
	qd, kvd := s.Heads*s.HeadDim, s.KVHeads*s.HeadDim
	q := view(sc.q, T, qd)
	if err := b.MatMul(q, x, w.Q); err != nil {
		return fmt.Errorf("q_proj: %w", err)
	}
	qh := view(q, T*s.Heads, s.HeadDim)
	if err := b.RMSNorm(qh, qh, w.QNorm, s.Eps); err != nil {
		return fmt.Errorf("q_norm: %w", err)
	}
	if err := b.RoPE(q, positions, s.InvFreq); err != nil {
		return fmt.Errorf("rope(q): %w", err)
	}
	if w.K != nil {
		k, v := view(sc.k, T, kvd), view(sc.v, T, kvd)
		if err := b.MatMul(k, x, w.K); err != nil {
			return fmt.Errorf("k_proj: %w", err)
		}
		vh := view(v, T*s.KVHeads, s.HeadDim)
		if s.KEqV {
			// v = v_norm(k_proj(x)): the raw projection, before k_norm and RoPE.
			if err := b.RMSNorm(vh, view(k, T*s.KVHeads, s.HeadDim), kernels.Tensor{}, s.Eps); err != nil {
				return fmt.Errorf("v_norm: %w", err)
			}
		} else {
			if err := b.MatMul(v, x, w.V); err != nil {
				return fmt.Errorf("v_proj: %w", err)
			}
			if err := b.RMSNorm(vh, vh, kernels.Tensor{}, s.Eps); err != nil {
				return fmt.Errorf("v_norm: %w", err)
			}
		}
		kh := view(k, T*s.KVHeads, s.HeadDim)
		if err := b.RMSNorm(kh, kh, w.KNorm, s.Eps); err != nil {
			return fmt.Errorf("k_norm: %w", err)
		}
		if err := b.RoPE(k, positions, s.InvFreq); err != nil {
			return fmt.Errorf("rope(k): %w", err)
		}
		if err := cache.Store(b, k, v, positions); err != nil {
			return err
		}
	}
	o := view(sc.o, T, qd)
	p := kernels.AttentionParams{Heads: s.Heads, KVHeads: s.KVHeads, HeadDim: s.HeadDim, Window: s.Window, Scale: 1}
	if err := b.Attention(o, q, cache.K, cache.V, positions, p); err != nil {
		return fmt.Errorf("attention: %w", err)
	}
	if err := b.MatMul(out, o, w.O); err != nil {
		return fmt.Errorf("o_proj: %w", err)
	}
	return nil
}
