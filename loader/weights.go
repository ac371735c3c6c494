package loader

import (
	"fmt"

	"github.com/gemmoe/gemmoe/dtype"
)

// Weight is a linear layer's weight as stored in the checkpoint: dense [.., N, K]
// or MLX affine-quantized (U32 [.., N, K·Bits/32] plus Scales and Biases
// [.., N, K/Group]). A 3D (per-expert) weight keeps all experts in one tensor;
// expert e starts DataStride bytes after expert e-1 (GroupStride for scales and
// biases). Data.Shape is [E, N, ...] for 3D weights even when the weight is a
// view into a fused tensor (then the strides are larger than one expert).
type Weight struct {
	Path           string // module path, e.g. "model.language_model.layers.0.mlp.up_proj"
	Data           *Tensor
	Scales, Biases *Tensor
	Bits, Group    int // 0 for dense
	N, K           int
	Experts        int
	DataStride     int64
	GroupStride    int64
}

// Quantized reports whether the weight is MLX affine-quantized.
func (w *Weight) Quantized() bool { return w != nil && w.Bits != 0 }

// Layer holds the tensors of one decoder layer. Absent parts are nil: V on
// K=V layers, K and V on KV-shared layers, the MoE block when disabled, PLE
// tensors on models without per-layer embeddings.
type Layer struct {
	Index  int
	Config LayerConfig

	InputNorm, PostAttnNorm, PreFFNorm, PostFFNorm *Tensor
	Q, K, V, O                                     *Weight
	QNorm, KNorm                                   *Tensor

	Gate, Up, Down *Weight // dense GeGLU MLP

	// MoE block.
	PreFFNorm2, PostFFNorm1, PostFFNorm2 *Tensor
	Router                               *Weight
	RouterScale, PerExpertScale          *Tensor
	ExpGate, ExpUp, ExpDown              *Weight

	LayerScalar *Tensor

	// Per-layer embeddings (E2B/E4B-style).
	PLEGate, PLEProj *Weight
	PLENorm          *Tensor
}

// Weights is the typed view of a checkpoint's text-model tensors.
type Weights struct {
	Layout string  // "hf", "hf-text" or "mlx"
	Embed  *Weight // [vocab, hidden]
	Norm   *Tensor // final norm
	LMHead *Weight // nil when the embedding is tied

	PLEEmbed     *Weight // [vocab_per_layer, layers·P]
	PLEModelProj *Weight // [layers·P, hidden]
	PLEProjNorm  *Tensor // [P]

	Layers []Layer
}

// layouts are the three naming schemes, tried in order.
var layouts = []struct{ name, prefix string }{
	{"hf", "model.language_model."},
	{"mlx", "language_model.model."},
	{"hf-text", "model."},
}

type mapper struct {
	tensors map[string]*Tensor
	quant   *QuantConfig
	prefix  string
	used    map[string]bool
}

func (m *mapper) get(name string) *Tensor {
	t := m.tensors[name]
	if t != nil {
		m.used[name] = true
	}
	return t
}

// vector returns a required 1D tensor of length n (float dtype).
func (m *mapper) vector(name string, n int) (*Tensor, error) {
	t := m.get(name)
	if t == nil {
		return nil, fmt.Errorf("missing tensor %q", name)
	}
	if !t.DType.IsFloat() {
		return nil, fmt.Errorf("tensor %q has dtype %s (want a float type)", name, t.DType)
	}
	if len(t.Shape) != 1 || t.Shape[0] != n {
		return nil, fmt.Errorf("tensor %q has shape %v, the config says [%d]", name, t.Shape, n)
	}
	return t, nil
}

// linear maps module path to a weight of logical shape [n, k] (experts > 0: [E, n, k]).
// The data tensor is path+".weight", or path itself when that exists (HF expert tensors).
func (m *mapper) linear(path string, experts, n, k int) (*Weight, error) {
	name := path + ".weight"
	data := m.get(name)
	if data == nil {
		if data = m.get(path); data == nil {
			return nil, fmt.Errorf("missing tensor %q", name)
		}
		name = path
	}
	w := &Weight{Path: path, Data: data, N: n, K: k, Experts: experts}
	lead := []int{}
	if experts > 0 {
		lead = []int{experts}
	}
	scales := m.get(path + ".scales")
	if scales == nil {
		if !data.DType.IsFloat() {
			return nil, fmt.Errorf("tensor %q has dtype %s but no %s.scales (dense weights must be F32, F16 or BF16)", name, data.DType, path)
		}
		if !equalShape(data.Shape, append(lead, n, k)) {
			return nil, fmt.Errorf("tensor %q has shape %v, the config says %v", name, data.Shape, append(lead, n, k))
		}
		if experts > 0 {
			w.DataStride = int64(n*k) * int64(data.DType.Size())
		}
		return w, nil
	}
	biases := m.get(path + ".biases")
	if biases == nil {
		return nil, fmt.Errorf("missing tensor %q (quantized module %s has scales)", path+".biases", path)
	}
	if m.quant == nil {
		return nil, fmt.Errorf("%s is quantized (has .scales) but config.json has no quantization block", path)
	}
	spec := m.quant.For(path)
	if err := spec.Check(path); err != nil {
		return nil, err
	}
	if data.DType != dtype.U32 {
		return nil, fmt.Errorf("quantized tensor %q has dtype %s (want U32)", name, data.DType)
	}
	if k%spec.Group != 0 {
		return nil, fmt.Errorf("%s: input width %d is not a multiple of its group size %d", path, k, spec.Group)
	}
	if k*spec.Bits%32 != 0 {
		return nil, fmt.Errorf("%s: %d inputs at %d bits do not fill whole 32-bit words", path, k, spec.Bits)
	}
	packed := append(append([]int(nil), lead...), n, k*spec.Bits/32)
	if !equalShape(data.Shape, packed) {
		return nil, fmt.Errorf("%s: packed tensor %q has shape %v, but [%d, %d] at %d bits needs %v (declared bits/group disagree with the data)",
			path, name, data.Shape, n, k, spec.Bits, packed)
	}
	groups := append(append([]int(nil), lead...), n, k/spec.Group)
	for _, t := range []*Tensor{scales, biases} {
		if !t.DType.IsFloat() {
			return nil, fmt.Errorf("tensor %q has dtype %s (want BF16, F16 or F32)", t.Name, t.DType)
		}
		if !equalShape(t.Shape, groups) {
			return nil, fmt.Errorf("%s: tensor %q has shape %v, but group size %d needs %v (declared bits/group disagree with the data)",
				path, t.Name, t.Shape, spec.Group, groups)
		}
	}
	if scales.DType != biases.DType {
		return nil, fmt.Errorf("%s: scales are %s but biases are %s", path, scales.DType, biases.DType)
	}
	w.Scales, w.Biases, w.Bits, w.Group = scales, biases, spec.Bits, spec.Group
	if experts > 0 {
		w.DataStride = int64(n*k*spec.Bits/32) * 4
		w.GroupStride = int64(n*k/spec.Group) * int64(scales.DType.Size())
	}
	return w, nil
}

// fusedExperts splits Hugging Face's experts.gate_up_proj [E, 2I, H] into
// gate and up views (gate rows first) without copying.
func (m *mapper) fusedExperts(path string, experts, width, hidden int) (gate, up *Weight, err error) {
	t := m.get(path)
	if t == nil {
		return nil, nil, fmt.Errorf("missing tensor %q", path)
	}
	if !t.DType.IsFloat() {
		return nil, nil, fmt.Errorf("tensor %q has dtype %s (want a float type)", path, t.DType)
	}
	if want := []int{experts, 2 * width, hidden}; !equalShape(t.Shape, want) {
		return nil, nil, fmt.Errorf("tensor %q has shape %v, the config says %v", path, t.Shape, want)
	}
	es := int64(t.DType.Size())
	stride := int64(2*width*hidden) * es
	half := int64(width*hidden) * es
	view := func(part string, off int64) *Weight {
		v := *t
		v.Name = path + "[" + part + "]"
		v.Shape = []int{experts, width, hidden}
		v.Offset = t.Offset + off
		end := off + int64(experts-1)*stride + half
		v.Data = t.Data[off:end:end]
		return &Weight{Path: path + "." + part, Data: &v, N: width, K: hidden, Experts: experts, DataStride: stride}
	}
	return view("gate", 0), view("up", half), nil
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// mapWeights builds the typed per-layer structure for cfg from the tensors.
func mapWeights(cfg *Config, tensors map[string]*Tensor, quant *QuantConfig) (*Weights, error) {
	m := &mapper{tensors: tensors, quant: quant, used: map[string]bool{}}
	w := &Weights{}
	for _, l := range layouts {
		if _, ok := tensors[l.prefix+"embed_tokens.weight"]; ok {
			m.prefix, w.Layout = l.prefix, l.name
			break
		}
	}
	if m.prefix == "" {
		return nil, fmt.Errorf("missing tensor %q (or its MLX/text-only spelling): no embedding table found", "model.language_model.embed_tokens.weight")
	}
	p := m.prefix
	h := cfg.HiddenSize
	var err error
	if w.Embed, err = m.linear(p+"embed_tokens", 0, cfg.VocabSize, h); err != nil {
		return nil, err
	}
	if w.Norm, err = m.vector(p+"norm.weight", h); err != nil {
		return nil, err
	}
	if !cfg.TieWordEmbeddings {
		head := "lm_head"
		if w.Layout == "mlx" {
			head = "language_model.lm_head"
		}
		if w.LMHead, err = m.linear(head, 0, cfg.VocabSize, h); err != nil {
			return nil, err
		}
	}
	L, P := cfg.NumLayers, cfg.PLEDim
	if P > 0 {
		if w.PLEEmbed, err = m.linear(p+"embed_tokens_per_layer", 0, cfg.PLEVocabSize, L*P); err != nil {
			return nil, err
		}
		if w.PLEModelProj, err = m.linear(p+"per_layer_model_projection", 0, L*P, h); err != nil {
			return nil, err
		}
		if w.PLEProjNorm, err = m.vector(p+"per_layer_projection_norm.weight", P); err != nil {
			return nil, err
		}
	}
	w.Layers = make([]Layer, L)
	for i := range w.Layers {
		if err := m.layer(cfg, i, &w.Layers[i]); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return w, nil
}

func (m *mapper) layer(cfg *Config, i int, l *Layer) error {
	lc := cfg.Layers[i]
	l.Index, l.Config = i, lc
	p := fmt.Sprintf("%slayers.%d.", m.prefix, i)
	h := cfg.HiddenSize
	var err error
	norms := []struct {
		dst  **Tensor
		name string
		n    int
	}{
		{&l.InputNorm, "input_layernorm", h}, {&l.PostAttnNorm, "post_attention_layernorm", h},
		{&l.PreFFNorm, "pre_feedforward_layernorm", h}, {&l.PostFFNorm, "post_feedforward_layernorm", h},
		{&l.QNorm, "self_attn.q_norm", lc.HeadDim},
	}
	if cfg.EnableMoE {
		norms = append(norms,
			struct {
				dst  **Tensor
				name string
				n    int
			}{&l.PreFFNorm2, "pre_feedforward_layernorm_2", h},
			struct {
				dst  **Tensor
				name string
				n    int
			}{&l.PostFFNorm1, "post_feedforward_layernorm_1", h},
			struct {
				dst  **Tensor
				name string
				n    int
			}{&l.PostFFNorm2, "post_feedforward_layernorm_2", h})
	}
	for _, n := range norms {
		if *n.dst, err = m.vector(p+n.name+".weight", n.n); err != nil {
			return err
		}
	}
	q := cfg.NumHeads * lc.HeadDim
	kv := lc.KVHeads * lc.HeadDim
	if l.Q, err = m.linear(p+"self_attn.q_proj", 0, q, h); err != nil {
		return err
	}
	if l.O, err = m.linear(p+"self_attn.o_proj", 0, h, q); err != nil {
		return err
	}
	if lc.KVSharedOf < 0 {
		if l.KNorm, err = m.vector(p+"self_attn.k_norm.weight", lc.HeadDim); err != nil {
			return err
		}
		if l.K, err = m.linear(p+"self_attn.k_proj", 0, kv, h); err != nil {
			return err
		}
		if !lc.KEqV {
			if l.V, err = m.linear(p+"self_attn.v_proj", 0, kv, h); err != nil {
				return err
			}
		}
	}
	if l.Gate, err = m.linear(p+"mlp.gate_proj", 0, lc.MLPWidth, h); err != nil {
		return err
	}
	if l.Up, err = m.linear(p+"mlp.up_proj", 0, lc.MLPWidth, h); err != nil {
		return err
	}
	if l.Down, err = m.linear(p+"mlp.down_proj", 0, h, lc.MLPWidth); err != nil {
		return err
	}
	if t := m.get(p + "layer_scalar"); t != nil {
		if !t.DType.IsFloat() || t.Numel() != 1 {
			return fmt.Errorf("tensor %q is %s%v (want one float)", t.Name, t.DType, t.Shape)
		}
		l.LayerScalar = t
	}
	if cfg.EnableMoE {
		E, I := cfg.NumExperts, cfg.MoEIntermediateSize
		if l.Router, err = m.linear(p+"router.proj", 0, E, h); err != nil {
			return err
		}
		if l.RouterScale, err = m.vector(p+"router.scale", h); err != nil {
			return err
		}
		if l.PerExpertScale, err = m.vector(p+"router.per_expert_scale", E); err != nil {
			return err
		}
		_, fused := m.tensors[p+"experts.gate_up_proj"]
		if !fused && m.prefix != "language_model.model." && m.tensors[p+"experts.switch_glu.gate_proj.weight"] == nil {
			fused = true // HF names: report the fused tensor, not an MLX name, as missing
		}
		if fused {
			if l.ExpGate, l.ExpUp, err = m.fusedExperts(p+"experts.gate_up_proj", E, I, h); err != nil {
				return err
			}
			if l.ExpDown, err = m.linear(p+"experts.down_proj", E, h, I); err != nil {
				return err
			}
		} else {
			sg := p + "experts.switch_glu."
			if l.ExpGate, err = m.linear(sg+"gate_proj", E, I, h); err != nil {
				return err
			}
			if l.ExpUp, err = m.linear(sg+"up_proj", E, I, h); err != nil {
				return err
			}
			if l.ExpDown, err = m.linear(sg+"down_proj", E, h, I); err != nil {
				return err
			}
		}
	}
	if P := cfg.PLEDim; P > 0 {
		if l.PLEGate, err = m.linear(p+"per_layer_input_gate", 0, P, h); err != nil {
			return err
		}
		if l.PLEProj, err = m.linear(p+"per_layer_projection", 0, h, P); err != nil {
			return err
		}
		if l.PLENorm, err = m.vector(p+"post_per_layer_input_norm.weight", h); err != nil {
			return err
		}
	}
	return nil
}
