// Package model is the Gemma 4 text model: weights from the loader placed on
// a kernels backend, the layer wiring of DESIGN.md §4 (attention, dense MLP
// and MoE block, layer_scalar, final norm, tied head, softcap, per-layer
// embeddings), sessions with their KV caches, and the decode loop.
package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/gemmoe/gemmoe/attention"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/moe"
)

// Options tune a Model.
type Options struct {
	// Chunk is the most tokens one forward step carries (prefill is split
	// into chunks of this size). It sizes the sliding layers' ring caches
	// (window + Chunk - 1 slots). Default 256.
	Chunk int
	// ContextLength caps positions (default: the config's max_position_embeddings).
	ContextLength int
	// CacheGrow is the growth step of full-attention caches in positions (default 1024).
	CacheGrow int
	// NoGraphs turns off recording the decode step as a graph on backends
	// that support it (kernels.Capturer); each op is then launched every step.
	NoGraphs bool
	// NoFusion turns off the fused ops of backends that offer them
	// (kernels.Fuser); each layer then runs the plain ops.
	NoFusion bool
	// ReadAllLogits makes Generate read every logit of each step even on
	// backends that pick the best ones where they lie (kernels.Selector).
	ReadAllLogits bool
}

// layer is one decoder layer's weights on the backend.
type layer struct {
	cfg                     loader.LayerConfig
	attn                    attention.Weights
	spec                    attention.Spec
	inputNorm, postAttnNorm kernels.Tensor
	preFFNorm, postFFNorm   kernels.Tensor
	postFFNorm1             kernels.Tensor
	gate, up, down          kernels.Weight
	moe                     *moe.Weights
	scalar                  float32
	pleGate, pleProj        kernels.Weight
	pleNorm                 kernels.Tensor
}

// Model is a Gemma 4 text model on a backend. It is safe to use from several
// goroutines: sessions own their caches, and steps on the shared backend are
// serialized.
type Model struct {
	Config  *loader.Config
	Backend kernels.Backend
	opts    Options

	files   []kernels.Buffer
	owned   []kernels.Tensor // small f32 tensors the model uploaded
	embed   kernels.Weight
	lmHead  kernels.Weight
	norm    kernels.Tensor
	layers  []layer
	moeSpec moe.Spec
	invFreq map[loader.LayerType]kernels.Tensor

	pleEmbed, pleModelProj kernels.Weight
	pleProjNorm            kernels.Tensor

	eos map[int32]bool
	mu  chan struct{} // serializes backend steps across sessions
}

// New places the weights of an opened checkpoint on backend b. The
// checkpoint must stay open while the model is used.
func New(src *loader.Model, b kernels.Backend, opts Options) (*Model, error) {
	cfg := src.Config
	if opts.Chunk <= 0 {
		opts.Chunk = 256
	}
	if opts.ContextLength <= 0 || opts.ContextLength > cfg.MaxPositionEmbeddings {
		opts.ContextLength = cfg.MaxPositionEmbeddings
	}
	if opts.CacheGrow <= 0 {
		opts.CacheGrow = 1024
	}
	m := &Model{Config: cfg, Backend: b, opts: opts, invFreq: map[loader.LayerType]kernels.Tensor{},
		eos: map[int32]bool{}, mu: make(chan struct{}, 1)}
	for _, id := range src.Generation.EOSTokenIDs {
		m.eos[int32(id)] = true
	}
	if err := m.place(src); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Model) place(src *loader.Model) error {
	b, cfg := m.Backend, m.Config
	for _, f := range src.Files {
		buf, err := b.WrapHost(f.Data)
		if err != nil {
			return fmt.Errorf("wrap %s: %w", f.Path, err)
		}
		m.files = append(m.files, buf)
	}
	w := src.Weights
	var err error
	if m.embed, err = m.weight(w.Embed); err != nil {
		return err
	}
	m.lmHead = m.embed
	if w.LMHead != nil {
		if m.lmHead, err = m.weight(w.LMHead); err != nil {
			return err
		}
	}
	if m.norm, err = m.vector(w.Norm, 1); err != nil {
		return err
	}
	eps := float32(cfg.RMSNormEps)
	m.moeSpec = moe.Spec{Experts: cfg.NumExperts, TopK: cfg.TopKExperts, Width: cfg.MoEIntermediateSize, Hidden: cfg.HiddenSize, Eps: eps}
	if cfg.PLEDim > 0 {
		if m.pleEmbed, err = m.weight(w.PLEEmbed); err != nil {
			return err
		}
		if m.pleModelProj, err = m.weight(w.PLEModelProj); err != nil {
			return err
		}
		if m.pleProjNorm, err = m.vector(w.PLEProjNorm, 1); err != nil {
			return err
		}
	}
	m.layers = make([]layer, len(w.Layers))
	for i := range w.Layers {
		if err := m.placeLayer(&w.Layers[i], &m.layers[i]); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

func (m *Model) placeLayer(src *loader.Layer, l *layer) error {
	cfg := m.Config
	lc := src.Config
	l.cfg = lc
	var err error
	vec := func(dst *kernels.Tensor, t *loader.Tensor) {
		if err == nil && t != nil {
			*dst, err = m.vector(t, 1)
		}
	}
	lin := func(dst *kernels.Weight, w *loader.Weight) {
		if err == nil && w != nil {
			*dst, err = m.weight(w)
		}
	}
	vec(&l.inputNorm, src.InputNorm)
	vec(&l.postAttnNorm, src.PostAttnNorm)
	vec(&l.preFFNorm, src.PreFFNorm)
	vec(&l.postFFNorm, src.PostFFNorm)
	vec(&l.postFFNorm1, src.PostFFNorm1)
	vec(&l.attn.QNorm, src.QNorm)
	vec(&l.attn.KNorm, src.KNorm)
	lin(&l.gate, src.Gate)
	lin(&l.up, src.Up)
	lin(&l.down, src.Down)
	for _, p := range []struct {
		dst **kernels.Weight
		w   *loader.Weight
	}{{&l.attn.Q, src.Q}, {&l.attn.K, src.K}, {&l.attn.V, src.V}, {&l.attn.O, src.O}} {
		if p.w != nil && err == nil {
			var kw kernels.Weight
			kw, err = m.weight(p.w)
			*p.dst = &kw
		}
	}
	if err != nil {
		return err
	}
	inv, err := m.ropeTable(lc)
	if err != nil {
		return err
	}
	l.spec = attention.Spec{Heads: cfg.NumHeads, KVHeads: lc.KVHeads, HeadDim: lc.HeadDim, Window: lc.Window,
		KEqV: lc.KEqV, Eps: float32(cfg.RMSNormEps), InvFreq: inv}
	l.scalar = 1
	if src.LayerScalar != nil {
		l.scalar = readFloat(src.LayerScalar, 0)
	}
	if cfg.EnableMoE {
		mw := &moe.Weights{}
		lin(&mw.Router, src.Router)
		lin(&mw.Gate, src.ExpGate)
		lin(&mw.Up, src.ExpUp)
		lin(&mw.Down, src.ExpDown)
		vec(&mw.RouterScale, src.RouterScale)
		vec(&mw.PerExpertScale, src.PerExpertScale)
		vec(&mw.PreNorm, src.PreFFNorm2)
		vec(&mw.PostNorm, src.PostFFNorm2)
		if err != nil {
			return err
		}
		l.moe = mw
	}
	if cfg.PLEDim > 0 {
		lin(&l.pleGate, src.PLEGate)
		lin(&l.pleProj, src.PLEProj)
		vec(&l.pleNorm, src.PLENorm)
	}
	return err
}

// ropeTable returns (making once) the inverse-frequency table of a layer's type.
func (m *Model) ropeTable(lc loader.LayerConfig) (kernels.Tensor, error) {
	if t, ok := m.invFreq[lc.Type]; ok && t.Numel() == lc.HeadDim/2 {
		return t, nil
	}
	t, err := m.upload(lc.Rope.InvFreq(lc.HeadDim))
	if err != nil {
		return t, err
	}
	m.invFreq[lc.Type] = t
	return t, nil
}

// weight turns a loader weight into a backend weight over the wrapped files.
func (m *Model) weight(w *loader.Weight) (kernels.Weight, error) {
	view := func(t *loader.Tensor) kernels.Tensor {
		shape := t.Shape
		if w.Experts > 0 {
			shape = shape[1:]
		}
		return kernels.Tensor{Buf: m.files[t.File], Offset: t.Offset, DType: t.DType, Shape: append([]int(nil), shape...)}
	}
	kw := kernels.Weight{Data: view(w.Data), Bits: w.Bits, Group: w.Group, N: w.N, K: w.K,
		Experts: w.Experts, DataStride: w.DataStride, GroupStride: w.GroupStride}
	if w.Quantized() {
		kw.Scales, kw.Biases = view(w.Scales), view(w.Biases)
	}
	if err := kw.Validate(); err != nil {
		return kw, fmt.Errorf("%s: %w", w.Path, err)
	}
	return kw, nil
}

// vector uploads a small float tensor as F32, multiplied by scale.
func (m *Model) vector(t *loader.Tensor, scale float32) (kernels.Tensor, error) {
	v := make([]float32, t.Numel())
	for i := range v {
		v[i] = readFloat(t, i) * scale
	}
	return m.upload(v)
}

func (m *Model) upload(v []float32) (kernels.Tensor, error) {
	t, err := m.Backend.Alloc(dtype.F32, len(v))
	if err != nil {
		return t, err
	}
	m.owned = append(m.owned, t)
	return t, m.Backend.Upload(t, f32Bytes(v))
}

// readFloat reads element i of a float tensor as float32.
func readFloat(t *loader.Tensor, i int) float32 {
	switch t.DType {
	case dtype.BF16:
		return dtype.BF16ToF32(binary.LittleEndian.Uint16(t.Data[2*i:]))
	case dtype.F16:
		return dtype.F16ToF32(binary.LittleEndian.Uint16(t.Data[2*i:]))
	default:
		return math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// Close releases what the model placed on the backend (not the backend).
func (m *Model) Close() error {
	for _, t := range m.owned {
		m.Backend.Free(t)
	}
	m.owned = nil
	return nil
}

// IsEOS reports whether id ends generation.
func (m *Model) IsEOS(id int32) bool { return m.eos[id] }

// ContextLength is the most positions a session may hold.
func (m *Model) ContextLength() int { return m.opts.ContextLength }

// KVBytesPerToken reports the KV cache bytes one more token costs while the
// context is shorter than the sliding window (all layers store it) and after
// (only full layers grow), in the backend's activation type.
func (m *Model) KVBytesPerToken() (underWindow, pastWindow int64) {
	es := int64(m.Backend.ActivationDType().Size())
	for _, l := range m.layers {
		if l.cfg.KVSharedOf >= 0 {
			continue
		}
		n := 2 * int64(l.cfg.KVHeads*l.cfg.HeadDim) * es
		underWindow += n
		if l.cfg.Type == loader.Full {
			pastWindow += n
		}
	}
	return underWindow, pastWindow
}

// TimeHead returns the seconds one LM-head product (final norm, the
// [vocab, hidden] matmul and the softcap) takes on the backend, the best
// of reps runs. Benchmarks use it to split decode time into layers and head.
func (m *Model) TimeHead(reps int) (float64, error) {
	s, err := m.NewSession()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	best := math.Inf(1)
	for range max(reps, 1) {
		t0 := time.Now()
		if err := m.Backend.RMSNorm(s.final, s.final, m.norm, float32(m.Config.RMSNormEps)); err != nil {
			return 0, err
		}
		if err := m.Backend.MatMul(s.logits, s.final, &m.lmHead); err != nil {
			return 0, err
		}
		if err := m.Backend.Sync(); err != nil {
			return 0, err
		}
		best = min(best, time.Since(t0).Seconds())
	}
	return best, nil
}
