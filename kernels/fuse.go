package kernels

import (
	"errors"
	"fmt"

	"github.com/gemmoe/gemmoe/dtype"
)

// NormParams is the RMSNorm a fused op applies to each input row before its
// product: xn = RMSNorm(x, Weight, Eps) kept in type XDType, then, if Scale
// is neither 0 nor 1, xn = Scale·xn (in XDType again) — what RMSNorm into a
// tensor of type XDType followed by Scale computes.
//
// With Off the input is already normed (a NormOut of the op before wrote
// it): xn = x, and the other fields are not used.
type NormParams struct {
	Weight Tensor // zero: no weight
	Eps    float32
	Scale  float32     // 0 or 1: none
	XDType dtype.DType // the type the unfused sequence stores xn in
	Off    bool        // x is xn
}

// NormOut asks a fused op that writes the residual h (AddRMSNorm,
// MoEEpilogue) to write a normed copy of the new h as well: Y =
// RMSNorm(h, Norm.Weight, Norm.Eps) in Y's type, then Scale(Y, Y,
// Norm.Scale) unless it is 0 or 1 — the xn that a NormMatMul or NormGLU of h
// with Norm computes, which the ops after then take with NormParams{Off:
// true} instead of norming h in each of their launches. Norm.XDType is not
// used (Y's type is).
type NormOut struct {
	Y    Tensor
	Norm NormParams
}

// AttentionPrepParams describes Fuser.AttentionPrep.
type AttentionPrepParams struct {
	QNorm, KNorm       Tensor // q_norm and k_norm weights ([HeadDim])
	Positions, InvFreq Tensor // I32 [T]; F32 [HeadDim/2] (see RoPE)
	KCache, VCache     Tensor // the layer's cache; unused without k
	Heads, KVHeads     int
	HeadDim            int
	KEqV               bool // v = v_norm(raw k): v is not read
	Eps                float32
}

// MoEEpilogueParams describes Fuser.MoEEpilogue: the weights of
// post_feedforward_layernorm_1, _2 and post_feedforward_layernorm, and the
// layer scalar (1: none; the zero value means 0).
type MoEEpilogueParams struct {
	Post1, Post2, PostFF Tensor
	Eps                  float32
	Scale                float32
}

// Fuser is implemented by backends that offer fused versions of the op
// sequences a Gemma 4 layer is made of: fewer kernel launches, with the
// intermediates kept on chip. Each method computes what the sequence of
// plain ops in its comment computes, rounding each intermediate to the type
// that sequence stores it in, so a model calls a Fuser where the backend is
// one and the plain ops otherwise and gets the same results (up to the
// order of float sums). Unfused is the reference: it runs the sequences.
// Scratch that a sequence would write and nothing reads afterwards (the
// normed x, the up half of a GLU, the inputs that AddRMSNorm and
// MoEEpilogue normalize) is left unspecified.
type Fuser interface {
	// NormMatMul computes ys[i] = xn·ws[i]ᵀ for each i, with xn the normed
	// x [M,K] (NormParams), then Softcap(ys[i], ys[i], softcap) if
	// softcap > 0: RMSNorm(xn, x, ...), [Scale(xn, xn, ...)], MatMul(ys[i],
	// xn, ws[i]), [Softcap]. The ws are 2D weights with the same K.
	NormMatMul(ys []Tensor, ws []*Weight, x Tensor, norm NormParams, softcap float32) error
	// NormGLU computes the gated GeLU of the normed x: MatMul(y, xn, gate),
	// MatMul(u, xn, up) (u of y's type), GeluTanhMul(y, y, u) — or, for 3D
	// gate and up, the same with MatMulExperts and ids [M,k] (y [M,k,N]).
	NormGLU(y Tensor, gate, up *Weight, ids, x Tensor, norm NormParams) error
	// AttentionPrep finishes the projections q [T,Heads·D], k and v
	// [T,KVHeads·D]: RMSNorm(q per head, QNorm), RoPE(q); and when k is not
	// zero: RMSNorm(v per head, k if KEqV else v, no weight), RMSNorm(k per
	// head, KNorm), RoPE(k), StoreKV(KCache, k), StoreKV(VCache, v).
	AttentionPrep(q, k, v Tensor, p AttentionPrepParams) error
	// AddRMSNorm adds a normed a [M,N] to the residual h: RMSNorm(a, a, w,
	// eps), Add(h, h, a), and Scale(h, h, scale) unless scale is 1; then
	// each of outs from the new h (NormOut).
	AddRMSNorm(h, a, w Tensor, eps, scale float32, outs ...NormOut) error
	// MoEEpilogue ends a MoE layer on h [M,N] from the dense MLP's output d
	// [M,N], the experts' outputs down [M,k,N] and their weights [M,k] (F32):
	// RMSNorm(d, d, Post1), MoECombine(e, down, weights) (e of d's type),
	// RMSNorm(e, e, Post2), Add(d, d, e), RMSNorm(d, d, PostFF), Add(h, h,
	// d), Scale(h, h, Scale) unless it is 1; then each of outs from the new
	// h (NormOut).
	MoEEpilogue(h, d, down, weights Tensor, p MoEEpilogueParams, outs ...NormOut) error
}

// Unfused implements Fuser with the plain ops of the backend it wraps: the
// reference semantics of every fused op. Backends use it for shapes their
// fused kernels do not cover; wrapping a backend in it makes a model take
// its fused code path with the plain ops (tests).
type Unfused struct{ Backend }

var _ Fuser = Unfused{}

func scaled(s float32) bool { return s != 0 && s != 1 }

// temp allocates a scratch tensor of the backend (freed by the caller).
func temp(b Backend, dt dtype.DType, shape ...int) (Tensor, error) { return b.Alloc(dt, shape...) }

// normed returns the normed x of norm (x itself with Off) and what frees it.
func (u Unfused) normed(x Tensor, norm NormParams) (Tensor, func(), error) {
	if norm.Off {
		return x, func() {}, nil
	}
	xn, err := temp(u.Backend, norm.XDType, x.Rows(), x.Cols())
	if err != nil {
		return Tensor{}, nil, err
	}
	free := func() { u.Free(xn) }
	if err := u.writeNorm(NormOut{Y: xn, Norm: norm}, x); err != nil {
		free()
		return Tensor{}, nil, err
	}
	return xn, free, nil
}

// writeNorm runs the RMSNorm and Scale of o from h into o.Y.
func (u Unfused) writeNorm(o NormOut, h Tensor) error {
	if err := u.RMSNorm(o.Y, h, o.Norm.Weight, o.Norm.Eps); err != nil {
		return err
	}
	if scaled(o.Norm.Scale) {
		return u.Scale(o.Y, o.Y, o.Norm.Scale)
	}
	return nil
}

// NormMatMul runs RMSNorm, Scale, the MatMuls and Softcap.
func (u Unfused) NormMatMul(ys []Tensor, ws []*Weight, x Tensor, norm NormParams, softcap float32) error {
	if len(ys) != len(ws) || len(ys) == 0 {
		return fmt.Errorf("kernels: NormMatMul of %d outputs and %d weights", len(ys), len(ws))
	}
	xn, free, err := u.normed(x, norm)
	if err != nil {
		return err
	}
	defer free()
	for i := range ys {
		if err := u.MatMul(ys[i], xn, ws[i]); err != nil {
			return err
		}
		if softcap > 0 {
			if err := u.Softcap(ys[i], ys[i], softcap); err != nil {
				return err
			}
		}
	}
	return nil
}

// NormGLU runs RMSNorm, the two products and GeluTanhMul.
func (u Unfused) NormGLU(y Tensor, gate, up *Weight, ids, x Tensor, norm NormParams) error {
	xn, free, err := u.normed(x, norm)
	if err != nil {
		return err
	}
	defer free()
	ut, err := temp(u.Backend, y.DType, y.Shape...)
	if err != nil {
		return err
	}
	defer u.Free(ut)
	if gate.Experts > 0 {
		if err := u.MatMulExperts(y, xn, gate, ids); err != nil {
			return err
		}
		if err := u.MatMulExperts(ut, xn, up, ids); err != nil {
			return err
		}
	} else {
		if err := u.MatMul(y, xn, gate); err != nil {
			return err
		}
		if err := u.MatMul(ut, xn, up); err != nil {
			return err
		}
	}
	return u.GeluTanhMul(y, y, ut)
}

// AttentionPrep runs the norms, RoPE and the cache stores.
func (u Unfused) AttentionPrep(q, k, v Tensor, p AttentionPrepParams) error {
	T, D := p.Positions.Numel(), p.HeadDim
	if D <= 0 || q.Numel() != T*p.Heads*D {
		return fmt.Errorf("kernels: AttentionPrep q%v for %d positions of %d×%d", q.Shape, T, p.Heads, D)
	}
	heads := func(t Tensor, n int) Tensor { t.Shape = []int{T * n, D}; return t }
	qh := heads(q, p.Heads)
	if err := u.RMSNorm(qh, qh, p.QNorm, p.Eps); err != nil {
		return err
	}
	if err := u.RoPE(q, p.Positions, p.InvFreq); err != nil {
		return err
	}
	if k.IsZero() {
		return nil
	}
	if k.Numel() != T*p.KVHeads*D || v.Numel() != T*p.KVHeads*D {
		return fmt.Errorf("kernels: AttentionPrep k%v v%v for %d positions of %d×%d", k.Shape, v.Shape, T, p.KVHeads, D)
	}
	kh, vh := heads(k, p.KVHeads), heads(v, p.KVHeads)
	src := vh
	if p.KEqV {
		src = kh
	}
	if err := u.RMSNorm(vh, src, Tensor{}, p.Eps); err != nil {
		return err
	}
	if err := u.RMSNorm(kh, kh, p.KNorm, p.Eps); err != nil {
		return err
	}
	if err := u.RoPE(k, p.Positions, p.InvFreq); err != nil {
		return err
	}
	rows := func(t Tensor) Tensor { t.Shape = []int{T, p.KVHeads * D}; return t }
	if err := u.StoreKV(p.KCache, rows(k), p.Positions); err != nil {
		return err
	}
	return u.StoreKV(p.VCache, rows(v), p.Positions)
}

// AddRMSNorm runs RMSNorm, Add and Scale, then the norms of outs.
func (u Unfused) AddRMSNorm(h, a, w Tensor, eps, scale float32, outs ...NormOut) error {
	if err := u.RMSNorm(a, a, w, eps); err != nil {
		return err
	}
	if err := u.Add(h, h, a); err != nil {
		return err
	}
	if scale != 1 {
		if err := u.Scale(h, h, scale); err != nil {
			return err
		}
	}
	return u.writeNorms(h, outs)
}

// writeNorms writes each of outs from h (writeNorm).
func (u Unfused) writeNorms(h Tensor, outs []NormOut) error {
	for _, o := range outs {
		if err := u.writeNorm(o, h); err != nil {
			return err
		}
	}
	return nil
}

// MoEEpilogue runs the norms, the combine, the adds and the scale, then the
// norms of outs.
func (u Unfused) MoEEpilogue(h, d, down, weights Tensor, p MoEEpilogueParams, outs ...NormOut) error {
	if d.IsZero() || h.IsZero() {
		return errors.New("kernels: MoEEpilogue without h or d")
	}
	e, err := temp(u.Backend, d.DType, d.Shape...)
	if err != nil {
		return err
	}
	defer u.Free(e)
	if err := u.RMSNorm(d, d, p.Post1, p.Eps); err != nil {
		return err
	}
	if err := u.MoECombine(e, down, weights); err != nil {
		return err
	}
	if err := u.RMSNorm(e, e, p.Post2, p.Eps); err != nil {
		return err
	}
	if err := u.Add(d, d, e); err != nil {
		return err
	}
	return u.AddRMSNorm(h, d, p.PostFF, p.Eps, p.Scale, outs...)
}
