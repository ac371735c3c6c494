package moe

import (
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// FusedNorms returns the router's and the experts' input norms of h for T
// tokens as kernels.NormOut into the scratch: an op that writes h
// (AddRMSNorm) can write them with it, and ExpertsFused with prenormed then
// reads them instead of norming h in its launches.
func FusedNorms(w *Weights, s Spec, sc *Scratch, T int) []kernels.NormOut {
	return []kernels.NormOut{
		{Y: rows(sc.rx, T, s.Hidden), Norm: routerNorm(w, s)},
		{Y: rows(sc.normed, T, s.Hidden), Norm: kernels.NormParams{Weight: w.PreNorm, Eps: s.Eps, XDType: sc.normed.DType}},
	}
}

// routerNorm is the router's input norm: RMSNorm with the router scale,
// then 1/√hidden, in F32.
func routerNorm(w *Weights, s Spec) kernels.NormParams {
	return kernels.NormParams{Weight: w.RouterScale, Eps: s.Eps, Scale: float32(1 / math.Sqrt(float64(s.Hidden))), XDType: dtype.F32}
}

// ExpertsFused runs the router and the experts on the residual h [T, hidden]
// through a backend that fuses ops (kernels.Fuser) and returns the experts'
// outputs down [T, k, hidden] and their weights [T, k], which the caller
// combines (kernels.Fuser.MoEEpilogue). The router norm rides on the router
// projection and the pre-norm on the experts' gate and up products, which
// run as one op — or, with prenormed, those read the normed copies of h
// that FusedNorms describes, written by the op before. The ids and weights
// are left in the scratch as Route leaves them.
func ExpertsFused(b kernels.Backend, f kernels.Fuser, h kernels.Tensor, w *Weights, s Spec, sc *Scratch, prenormed bool) (down, weights kernels.Tensor, err error) {
	T := h.Rows()
	if T > sc.Rows {
		return down, weights, fmt.Errorf("moe: %d tokens exceed the scratch of %d", T, sc.Rows)
	}
	logits := rows(sc.logits, T, s.Experts)
	rx, rn := h, routerNorm(w, s)
	ex, pn := h, kernels.NormParams{Weight: w.PreNorm, Eps: s.Eps, XDType: sc.normed.DType}
	if prenormed {
		rx, rn = rows(sc.rx, T, s.Hidden), kernels.NormParams{Off: true}
		ex, pn = rows(sc.normed, T, s.Hidden), kernels.NormParams{Off: true}
	}
	if err := f.NormMatMul([]kernels.Tensor{logits}, []*kernels.Weight{&w.Router}, rx, rn, 0); err != nil {
		return down, weights, fmt.Errorf("router proj: %w", err)
	}
	ids, weights := rows(sc.ids, T, s.TopK), rows(sc.weights, T, s.TopK)
	if err := b.RouterTopK(weights, ids, logits, w.PerExpertScale, s.TopK); err != nil {
		return down, weights, fmt.Errorf("router top-k: %w", err)
	}
	gate := rows(sc.gate, T, s.TopK, s.Width)
	if err := f.NormGLU(gate, &w.Gate, &w.Up, ids, ex, pn); err != nil {
		return down, weights, fmt.Errorf("experts gate/up: %w", err)
	}
	down = rows(sc.down, T, s.TopK, s.Hidden)
	if err := b.MatMulExperts(down, rows(gate, T*s.TopK, s.Width), &w.Down, ids); err != nil {
		return down, weights, fmt.Errorf("experts down: %w", err)
	}
	return down, weights, nil
}
