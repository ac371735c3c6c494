package model

import (
	"errors"
	"fmt"

	"github.com/gemmoe/gemmoe/attention"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/moe"
)

// fuser returns the backend as a kernels.Fuser when it is one and fusion is on.
func (s *Session) fuser() (kernels.Fuser, bool) {
	if s.m.opts.NoFusion {
		return nil, false
	}
	f, ok := s.m.Backend.(kernels.Fuser)
	return f, ok
}

// layerFused is layer through a backend's fused ops: the same computation
// (kernels.Fuser documents each op as the plain sequence it replaces) in
// about a third of the launches.
func (s *Session) layerFused(f kernels.Fuser, i, T int, h, pos kernels.Tensor, trace *Trace) error {
	m := s.m
	b, cfg := m.Backend, m.Config
	l := &m.layers[i]
	H := cfg.HiddenSize
	eps := float32(cfg.RMSNormEps)
	act := b.ActivationDType()
	rows := func(t kernels.Tensor, cols int) kernels.Tensor { t.Shape = []int{T, cols}; return t }
	a, d := rows(s.a, H), rows(s.d, H)
	// The ops that write h also write the normed copies of it that the
	// launches after them read (kernels.NormOut), so those launches do not
	// each norm h: the q/k/v input (s.e, written by the layer before), the
	// dense MLP's (s.x), the router's and the experts' (moe.FusedNorms).
	// Only for prompts (T > 1): there the products are GEMMs, which norm
	// their input by separate launches; a decode step's matrix-vector
	// launches norm x in their staging while their first weights are in
	// flight, so copies would only lengthen the one-block ops (measured in
	// kernels/cuda/NOTES.md). Not with per-layer inputs, which change h
	// between layers.
	pre := cfg.PLEDim == 0 && T > 1
	in := kernels.NormParams{Weight: l.inputNorm, Eps: eps, XDType: act}
	x, xq, xd := h, rows(s.e, H), rows(s.x, H)
	if pre && i > 0 && s.qkvNormed {
		x, in = xq, kernels.NormParams{Off: true}
	}
	s.qkvNormed = false
	if err := attention.ForwardFused(b, f, a, x, in, pos, &l.attn, l.spec, s.caches[i], s.attn); err != nil {
		return err
	}
	preFF := kernels.NormParams{Weight: l.preFFNorm, Eps: eps, XDType: act}
	var outs []kernels.NormOut
	if pre {
		outs = append(outs, kernels.NormOut{Y: xd, Norm: preFF})
		if l.moe != nil {
			outs = append(outs, moe.FusedNorms(l.moe, m.moeSpec, s.moe, T)...)
		}
	}
	if err := f.AddRMSNorm(h, a, l.postAttnNorm, eps, 1, outs...); err != nil {
		return fmt.Errorf("post_attention_layernorm: %w", err)
	}
	// The next layer's q/k/v input, written with the new h at the layer's end.
	var next []kernels.NormOut
	if pre && i+1 < len(m.layers) {
		next = []kernels.NormOut{{Y: xq, Norm: kernels.NormParams{Weight: m.layers[i+1].inputNorm, Eps: eps, XDType: act}}}
	}
	// Dense GeGLU MLP.
	dense := func() error {
		g := rows(s.g, l.cfg.MLPWidth)
		x, pn := h, preFF
		if pre {
			x, pn = xd, kernels.NormParams{Off: true}
		}
		if err := f.NormGLU(g, &l.gate, &l.up, kernels.Tensor{}, x, pn); err != nil {
			return fmt.Errorf("mlp gate/up: %w", err)
		}
		if err := b.MatMul(d, g, &l.down); err != nil {
			return fmt.Errorf("mlp down: %w", err)
		}
		return nil
	}
	scale := l.scalar
	if cfg.PLEDim > 0 {
		scale = 1 // the per-layer input comes before layer_scalar
	}
	if l.moe != nil {
		// The dense MLP and the experts both read h and write their own
		// scratch: where the backend can, the MLP runs beside the router
		// and experts, which shortens the layer's chain of dependent ops.
		c, concurrent := b.(kernels.Concurrent)
		var err error
		if concurrent {
			err = c.Side(dense)
		} else {
			err = dense()
		}
		var down, weights kernels.Tensor
		if err == nil {
			down, weights, err = moe.ExpertsFused(b, f, h, l.moe, m.moeSpec, s.moe, pre)
		}
		if concurrent {
			err = errors.Join(err, c.Join())
		}
		if err != nil {
			return err
		}
		if trace != nil && trace.Router != nil {
			if err := s.traceRouter(i, T, trace); err != nil {
				return err
			}
		}
		p := kernels.MoEEpilogueParams{Post1: l.postFFNorm1, Post2: l.moe.PostNorm, PostFF: l.postFFNorm, Eps: eps, Scale: scale}
		if err := f.MoEEpilogue(h, d, down, weights, p, next...); err != nil {
			return fmt.Errorf("post_feedforward_layernorms: %w", err)
		}
	} else {
		if err := dense(); err != nil {
			return err
		}
		if err := f.AddRMSNorm(h, d, l.postFFNorm, eps, scale, next...); err != nil {
			return fmt.Errorf("post_feedforward_layernorm: %w", err)
		}
	}
	s.qkvNormed = len(next) > 0
	if cfg.PLEDim > 0 {
		if err := s.perLayerStep(i, h); err != nil {
			return err
		}
		if l.scalar != 1 {
			if err := b.Scale(h, h, l.scalar); err != nil {
				return err
			}
		}
	}
	return nil
}

// headFused is head through a backend's fused ops: the final norm rides on
// the LM head product, which applies the softcap.
func (s *Session) headFused(f kernels.Fuser, h kernels.Tensor, r int) error {
	m := s.m
	row, err := h.RowRange(r, r+1)
	if err != nil {
		return err
	}
	n := kernels.NormParams{Weight: m.norm, Eps: float32(m.Config.RMSNormEps), XDType: s.final.DType}
	if err := f.NormMatMul([]kernels.Tensor{s.logits}, []*kernels.Weight{&m.lmHead}, row, n, float32(max(m.Config.FinalLogitSoftcap, 0))); err != nil {
		return fmt.Errorf("lm head: %w", err)
	}
	return nil
}
