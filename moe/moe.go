// Package moe is Gemma 4's mixture-of-experts block: the router (on the
// un-normed residual) and the expert GeGLU through MatMulExperts, with the
// chosen expert ids left on the backend.
package moe

import (
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Weights are one layer's MoE weights on a backend.
type Weights struct {
	Router            kernels.Weight // [E, hidden]
	RouterScale       kernels.Tensor // F32 [hidden]
	PerExpertScale    kernels.Tensor // F32 [E]
	Gate, Up, Down    kernels.Weight // 3D: [E, I, hidden], [E, I, hidden], [E, hidden, I]
	PreNorm, PostNorm kernels.Tensor // pre_feedforward_layernorm_2, post_feedforward_layernorm_2
}

// Spec is the MoE block's shape.
type Spec struct {
	Experts, TopK, Width, Hidden int
	Eps                          float32
}

// Scratch holds the block's activations for up to Rows tokens. The router
// works in F32 whatever the activation type (near-tied routing would flip
// under bf16 rounding).
type Scratch struct {
	Rows                             int
	normed, rx, logits, weights, ids kernels.Tensor
	gate, up, down                   kernels.Tensor
}

// NewScratch allocates the block's activations for up to rows tokens.
func NewScratch(b kernels.Backend, rows int, s Spec) (*Scratch, error) {
	dt := b.ActivationDType()
	sc := &Scratch{Rows: rows}
	allocs := []struct {
		dst   *kernels.Tensor
		dt    dtype.DType
		shape []int
	}{
		{&sc.normed, dt, []int{rows, s.Hidden}},
		{&sc.rx, dtype.F32, []int{rows, s.Hidden}},
		{&sc.logits, dtype.F32, []int{rows, s.Experts}},
		{&sc.weights, dtype.F32, []int{rows, s.TopK}},
		{&sc.ids, dtype.I32, []int{rows, s.TopK}},
		{&sc.gate, dt, []int{rows, s.TopK, s.Width}},
		{&sc.up, dt, []int{rows, s.TopK, s.Width}},
		{&sc.down, dt, []int{rows, s.TopK, s.Hidden}},
	}
	for _, a := range allocs {
		t, err := b.Alloc(a.dt, a.shape...)
		if err != nil {
			sc.Free(b)
			return nil, fmt.Errorf("moe scratch: %w", err)
		}
		*a.dst = t
	}
	return sc, nil
}

// Free releases the scratch tensors.
func (sc *Scratch) Free(b kernels.Backend) {
	for _, t := range []kernels.Tensor{sc.normed, sc.rx, sc.logits, sc.weights, sc.ids, sc.gate, sc.up, sc.down} {
		if !t.IsZero() {
			b.Free(t)
		}
	}
}

func rows(t kernels.Tensor, n int, shape ...int) kernels.Tensor {
	switch len(shape) {
	case 1:
		t.Shape = kernels.Shape(n, shape[0])
	case 2:
		t.Shape = kernels.Shape(n, shape[0], shape[1])
	default:
		t.Shape = append([]int{n}, shape...)
	}
	return t
}

// Route runs the router on the residual h [T, hidden]: x = RMS(h)·scale·hidden^-½,
// p = softmax(proj(x)), top-k renormalized and scaled per expert. It leaves
// the ids [T, k] and weights [T, k] in the scratch and returns them.
func Route(b kernels.Backend, h kernels.Tensor, w *Weights, s Spec, sc *Scratch) (ids, weights kernels.Tensor, err error) {
	T := h.Rows()
	rx := rows(sc.rx, T, s.Hidden)
	if err := b.RMSNorm(rx, h, w.RouterScale, s.Eps); err != nil {
		return ids, weights, fmt.Errorf("router norm: %w", err)
	}
	if err := b.Scale(rx, rx, float32(1/math.Sqrt(float64(s.Hidden)))); err != nil {
		return ids, weights, fmt.Errorf("router scale: %w", err)
	}
	logits := rows(sc.logits, T, s.Experts)
	if err := b.MatMul(logits, rx, &w.Router); err != nil {
		return ids, weights, fmt.Errorf("router proj: %w", err)
	}
	ids, weights = rows(sc.ids, T, s.TopK), rows(sc.weights, T, s.TopK)
	if err := b.RouterTopK(weights, ids, logits, w.PerExpertScale, s.TopK); err != nil {
		return ids, weights, fmt.Errorf("router top-k: %w", err)
	}
	return ids, weights, nil
}

// Forward computes out [T, hidden] = post_norm(Σ_j w_j·expert_j(pre_norm(h)))
// for the experts the router picked from h.
func Forward(b kernels.Backend, out, h kernels.Tensor, w *Weights, s Spec, sc *Scratch) error {
	T := h.Rows()
	if T > sc.Rows {
		return fmt.Errorf("moe: %d tokens exceed the scratch of %d", T, sc.Rows)
	}
	ids, weights, err := Route(b, h, w, s, sc)
	if err != nil {
		return err
	}
	x := rows(sc.normed, T, s.Hidden)
	if err := b.RMSNorm(x, h, w.PreNorm, s.Eps); err != nil {
		return fmt.Errorf("pre_feedforward_layernorm_2: %w", err)
	}
	gate, up := rows(sc.gate, T, s.TopK, s.Width), rows(sc.up, T, s.TopK, s.Width)
	if err := b.MatMulExperts(gate, x, &w.Gate, ids); err != nil {
		return fmt.Errorf("experts gate: %w", err)
	}
	if err := b.MatMulExperts(up, x, &w.Up, ids); err != nil {
		return fmt.Errorf("experts up: %w", err)
	}
	if err := b.GeluTanhMul(gate, gate, up); err != nil {
		return fmt.Errorf("experts gelu: %w", err)
	}
	down := rows(sc.down, T, s.TopK, s.Hidden)
	if err := b.MatMulExperts(down, rows(gate, T*s.TopK, s.Width), &w.Down, ids); err != nil {
		return fmt.Errorf("experts down: %w", err)
	}
	if err := b.MoECombine(out, down, weights); err != nil {
		return fmt.Errorf("experts combine: %w", err)
	}
	if err := b.RMSNorm(out, out, w.PostNorm, s.Eps); err != nil {
		return fmt.Errorf("post_feedforward_layernorm_2: %w", err)
	}
	return nil
}

// Choice returns the router's last ids [T, k] and weights [T, k] (for traces).
func (sc *Scratch) Choice(T, k int) (ids, weights kernels.Tensor) {
	return rows(sc.ids, T, k), rows(sc.weights, T, k)
}
