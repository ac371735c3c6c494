package loader

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// LayerType is the attention kind of a decoder layer.
type LayerType int

// The layer types of Gemma 4.
const (
	Sliding LayerType = iota // sliding-window attention
	Full                     // full (global) attention
)

// String returns the config.json spelling of the layer type.
func (t LayerType) String() string {
	if t == Full {
		return "full_attention"
	}
	return "sliding_attention"
}

// MarshalJSON writes the config.json spelling.
func (t LayerType) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// Rope holds the rotary embedding parameters of one layer type.
type Rope struct {
	Type          string  `json:"rope_type"` // "default" or "proportional"
	Theta         float64 `json:"rope_theta"`
	PartialRotary float64 `json:"partial_rotary_factor"` // fraction of the head that rotates (1 = all)
}

// InvFreq returns the inverse frequencies for a head of dim d: θ^(-2i/d) for
// the rotating pairs, 0 for pairs beyond the partial rotary fraction (those
// dimensions are not rotated). The exponent's denominator is the full d.
func (r Rope) InvFreq(d int) []float32 {
	half := d / 2
	rot := half
	if r.PartialRotary > 0 && r.PartialRotary < 1 {
		rot = int(r.PartialRotary * float64(d) / 2)
	}
	out := make([]float32, half)
	for i := 0; i < rot; i++ {
		// As PyTorch computes it: 1 / theta ** (arange(0, d, 2).float() / d),
		// each step rounded to float32.
		exp := float32(2*i) / float32(d)
		out[i] = 1 / float32(math.Pow(r.Theta, float64(exp)))
	}
	return out
}

// LayerConfig is the resolved shape of one decoder layer.
type LayerConfig struct {
	Type       LayerType `json:"type"`
	HeadDim    int       `json:"head_dim"`
	KVHeads    int       `json:"kv_heads"`
	KEqV       bool      `json:"k_eq_v"`           // no v_proj: v comes from k_proj
	KVSharedOf int       `json:"kv_shared_of"`     // donor layer whose cache this layer reads, or -1
	MLPWidth   int       `json:"mlp_width"`        // dense MLP intermediate size
	Window     int       `json:"window,omitempty"` // sliding window (0 for full layers)
	Rope       Rope      `json:"rope"`             // rotary parameters of this layer's type
}

// Config is a Gemma 4 text model configuration, resolved per layer.
type Config struct {
	ModelType             string        `json:"model_type"`
	VocabSize             int           `json:"vocab_size"`
	HiddenSize            int           `json:"hidden_size"`
	NumLayers             int           `json:"num_hidden_layers"`
	NumHeads              int           `json:"num_attention_heads"`
	NumKVHeads            int           `json:"num_key_value_heads"`
	HeadDim               int           `json:"head_dim"`
	GlobalHeadDim         int           `json:"global_head_dim"`
	NumGlobalKVHeads      int           `json:"num_global_key_value_heads"`
	AttentionKEqV         bool          `json:"attention_k_eq_v"`
	SlidingWindow         int           `json:"sliding_window"`
	IntermediateSize      int           `json:"intermediate_size"`
	EnableMoE             bool          `json:"enable_moe_block"`
	NumExperts            int           `json:"num_experts"`
	TopKExperts           int           `json:"top_k_experts"`
	MoEIntermediateSize   int           `json:"moe_intermediate_size"`
	RMSNormEps            float64       `json:"rms_norm_eps"`
	FinalLogitSoftcap     float64       `json:"final_logit_softcapping"` // 0: none
	TieWordEmbeddings     bool          `json:"tie_word_embeddings"`
	MaxPositionEmbeddings int           `json:"max_position_embeddings"`
	HiddenActivation      string        `json:"hidden_activation"`
	PLEDim                int           `json:"hidden_size_per_layer_input"` // 0: no per-layer embeddings
	PLEVocabSize          int           `json:"vocab_size_per_layer_input"`
	NumKVSharedLayers     int           `json:"num_kv_shared_layers"`
	UseDoubleWideMLP      bool          `json:"use_double_wide_mlp"`
	BOSTokenID            int           `json:"bos_token_id"`
	PadTokenID            int           `json:"pad_token_id"`
	EOSTokenIDs           []int         `json:"eos_token_ids"`
	Layers                []LayerConfig `json:"layers"`
}

// rawText mirrors the keys of a Gemma 4 text config as the Hub writes them.
type rawText struct {
	ModelType             string                     `json:"model_type"`
	VocabSize             int                        `json:"vocab_size"`
	HiddenSize            int                        `json:"hidden_size"`
	NumLayers             int                        `json:"num_hidden_layers"`
	NumHeads              int                        `json:"num_attention_heads"`
	NumKVHeads            int                        `json:"num_key_value_heads"`
	HeadDim               int                        `json:"head_dim"`
	GlobalHeadDim         int                        `json:"global_head_dim"`
	NumGlobalKVHeads      int                        `json:"num_global_key_value_heads"`
	AttentionKEqV         bool                       `json:"attention_k_eq_v"`
	AttentionBias         bool                       `json:"attention_bias"`
	SlidingWindow         int                        `json:"sliding_window"`
	LayerTypes            []string                   `json:"layer_types"`
	IntermediateSize      json.RawMessage            `json:"intermediate_size"`
	EnableMoE             bool                       `json:"enable_moe_block"`
	NumExperts            int                        `json:"num_experts"`
	TopKExperts           int                        `json:"top_k_experts"`
	MoEIntermediateSize   int                        `json:"moe_intermediate_size"`
	RMSNormEps            float64                    `json:"rms_norm_eps"`
	FinalLogitSoftcap     *float64                   `json:"final_logit_softcapping"`
	TieWordEmbeddings     *bool                      `json:"tie_word_embeddings"`
	MaxPositionEmbeddings int                        `json:"max_position_embeddings"`
	HiddenActivation      string                     `json:"hidden_activation"`
	PLEDim                int                        `json:"hidden_size_per_layer_input"`
	PLEVocabSize          int                        `json:"vocab_size_per_layer_input"`
	NumKVSharedLayers     int                        `json:"num_kv_shared_layers"`
	UseDoubleWideMLP      bool                       `json:"use_double_wide_mlp"`
	RopeParameters        map[string]json.RawMessage `json:"rope_parameters"`
	RopeTheta             float64                    `json:"rope_theta"`
	RopeLocalBaseFreq     float64                    `json:"rope_local_base_freq"`
	BOSTokenID            *int                       `json:"bos_token_id"`
	PadTokenID            int                        `json:"pad_token_id"`
	EOSTokenID            json.RawMessage            `json:"eos_token_id"`
	PerLayerRaw           json.RawMessage            `json:"per_layer_config"`
	PerLayerConfig        []perLayer                 `json:"-"` // PerLayerRaw resolved to one entry per layer
}

// perLayer is one entry of the per_layer_config form: per-layer values that
// override the flat keys.
type perLayer struct {
	LayerType        string `json:"layer_type"`
	AttentionType    string `json:"attention_type"`
	HeadDim          int    `json:"head_dim"`
	NumKVHeads       int    `json:"num_key_value_heads"`
	AttentionKEqV    *bool  `json:"attention_k_eq_v"`
	IntermediateSize int    `json:"intermediate_size"`
	SlidingWindow    int    `json:"sliding_window"`
}

// ParseConfig parses a config.json: a multimodal Gemma 4 config
// (model_type "gemma4" with "text_config") or a text one ("gemma4_text").
func ParseConfig(data []byte) (*Config, error) {
	var top struct {
		ModelType  string          `json:"model_type"`
		TextConfig json.RawMessage `json:"text_config"`
		EOSTokenID json.RawMessage `json:"eos_token_id"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	text := data
	switch top.ModelType {
	case "gemma4":
		if len(top.TextConfig) == 0 {
			return nil, fmt.Errorf("config.json: model_type gemma4 without a text_config")
		}
		text = top.TextConfig
	case "gemma4_text":
	case "":
		return nil, fmt.Errorf("config.json: no model_type (want gemma4 or gemma4_text)")
	default:
		return nil, fmt.Errorf("config.json: model_type %q is not supported (want gemma4 or gemma4_text)", top.ModelType)
	}
	var r rawText
	if err := json.Unmarshal(text, &r); err != nil {
		return nil, fmt.Errorf("config.json: text config: %w", err)
	}
	if r.ModelType != "" && r.ModelType != "gemma4_text" {
		return nil, fmt.Errorf("config.json: text_config model_type %q is not supported (want gemma4_text)", r.ModelType)
	}
	c, err := resolve(&r)
	if err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	// The top-level eos list (instruction models: [1, 106]) wins over the text one.
	if ids, err := parseIDs(top.EOSTokenID); err != nil {
		return nil, fmt.Errorf("config.json: eos_token_id: %w", err)
	} else if len(ids) > 0 {
		c.EOSTokenIDs = ids
	}
	return c, nil
}

// parseIDs reads a token id given as an int, a list of ints, or null.
func parseIDs(raw json.RawMessage) ([]int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want an int or a list of ints, got %s", raw)
	}
	return many, nil
}

func resolve(r *rawText) (*Config, error) {
	c := &Config{
		ModelType: "gemma4_text", VocabSize: r.VocabSize, HiddenSize: r.HiddenSize, NumLayers: r.NumLayers,
		NumHeads: r.NumHeads, NumKVHeads: r.NumKVHeads, HeadDim: r.HeadDim, GlobalHeadDim: r.GlobalHeadDim,
		NumGlobalKVHeads: r.NumGlobalKVHeads, AttentionKEqV: r.AttentionKEqV, SlidingWindow: r.SlidingWindow,
		EnableMoE: r.EnableMoE, NumExperts: r.NumExperts, TopKExperts: r.TopKExperts,
		MoEIntermediateSize: r.MoEIntermediateSize, RMSNormEps: r.RMSNormEps,
		MaxPositionEmbeddings: r.MaxPositionEmbeddings, HiddenActivation: r.HiddenActivation,
		PLEDim: r.PLEDim, PLEVocabSize: r.PLEVocabSize, NumKVSharedLayers: r.NumKVSharedLayers,
		UseDoubleWideMLP: r.UseDoubleWideMLP, PadTokenID: r.PadTokenID, BOSTokenID: 2, TieWordEmbeddings: true,
	}
	if r.BOSTokenID != nil {
		c.BOSTokenID = *r.BOSTokenID
	}
	if r.TieWordEmbeddings != nil {
		c.TieWordEmbeddings = *r.TieWordEmbeddings
	}
	if r.FinalLogitSoftcap != nil {
		c.FinalLogitSoftcap = *r.FinalLogitSoftcap
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.HiddenActivation == "" {
		c.HiddenActivation = "gelu_pytorch_tanh"
	}
	if c.PLEVocabSize == 0 {
		c.PLEVocabSize = c.VocabSize
	}
	eos, err := parseIDs(r.EOSTokenID)
	if err != nil {
		return nil, fmt.Errorf("eos_token_id: %w", err)
	}
	c.EOSTokenIDs = eos
	for _, f := range []struct {
		name string
		v    int
	}{{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumLayers},
		{"num_attention_heads", c.NumHeads}, {"num_key_value_heads", c.NumKVHeads}, {"head_dim", c.HeadDim}} {
		if f.v <= 0 {
			return nil, fmt.Errorf("%s must be positive, is %d", f.name, f.v)
		}
	}
	if c.HiddenActivation != "gelu_pytorch_tanh" && c.HiddenActivation != "gelu_tanh" {
		return nil, fmt.Errorf("hidden_activation %q is not supported (want gelu_pytorch_tanh)", c.HiddenActivation)
	}
	if r.AttentionBias {
		return nil, fmt.Errorf("attention_bias true is not supported")
	}
	if c.EnableMoE && (c.NumExperts <= 0 || c.TopKExperts <= 0 || c.TopKExperts > c.NumExperts || c.MoEIntermediateSize <= 0) {
		return nil, fmt.Errorf("MoE block needs num_experts > 0, 0 < top_k_experts ≤ num_experts and moe_intermediate_size > 0 (have %d, %d, %d)",
			c.NumExperts, c.TopKExperts, c.MoEIntermediateSize)
	}
	if c.NumKVSharedLayers < 0 || c.NumKVSharedLayers >= c.NumLayers {
		return nil, fmt.Errorf("num_kv_shared_layers %d is out of range for %d layers", c.NumKVSharedLayers, c.NumLayers)
	}
	widths, err := parseWidths(r.IntermediateSize, c.NumLayers)
	if err != nil {
		return nil, fmt.Errorf("intermediate_size: %w", err)
	}
	c.IntermediateSize = widths[0]

	// Layer types: explicit list, else every 6th layer and the last are full.
	types := make([]LayerType, c.NumLayers)
	switch {
	case len(r.LayerTypes) > 0:
		if len(r.LayerTypes) != c.NumLayers {
			return nil, fmt.Errorf("layer_types has %d entries for %d layers", len(r.LayerTypes), c.NumLayers)
		}
		for i, s := range r.LayerTypes {
			t, err := parseLayerType(s)
			if err != nil {
				return nil, fmt.Errorf("layer_types[%d]: %w", i, err)
			}
			types[i] = t
		}
	default:
		for i := range types {
			if (i+1)%6 == 0 || i == c.NumLayers-1 {
				types[i] = Full
			}
		}
	}
	if r.PerLayerConfig, err = parsePerLayer(r.PerLayerRaw, c.NumLayers); err != nil {
		return nil, err
	}
	if len(r.PerLayerConfig) > 0 && len(r.PerLayerConfig) != c.NumLayers {
		return nil, fmt.Errorf("per_layer_config has %d entries for %d layers", len(r.PerLayerConfig), c.NumLayers)
	}

	ropes, err := parseRopes(r)
	if err != nil {
		return nil, err
	}

	c.Layers = make([]LayerConfig, c.NumLayers)
	firstShared := c.NumLayers - c.NumKVSharedLayers
	for i := range c.Layers {
		lc := LayerConfig{Type: types[i], HeadDim: c.HeadDim, KVHeads: c.NumKVHeads, MLPWidth: widths[i], KVSharedOf: -1}
		var pl *perLayer
		if len(r.PerLayerConfig) > 0 {
			pl = &r.PerLayerConfig[i]
			s := pl.LayerType
			if s == "" {
				s = pl.AttentionType
			}
			if s != "" {
				t, err := parseLayerType(s)
				if err != nil {
					return nil, fmt.Errorf("per_layer_config[%d]: %w", i, err)
				}
				lc.Type = t
			}
		}
		if lc.Type == Full {
			if c.GlobalHeadDim > 0 {
				lc.HeadDim = c.GlobalHeadDim
			}
			lc.KEqV = c.AttentionKEqV
			if c.AttentionKEqV && c.NumGlobalKVHeads > 0 {
				lc.KVHeads = c.NumGlobalKVHeads
			}
		} else {
			lc.Window = c.SlidingWindow
		}
		if pl != nil {
			if pl.HeadDim > 0 {
				lc.HeadDim = pl.HeadDim
			}
			if pl.NumKVHeads > 0 {
				lc.KVHeads = pl.NumKVHeads
			}
			if pl.AttentionKEqV != nil {
				lc.KEqV = *pl.AttentionKEqV
			}
			if pl.IntermediateSize > 0 {
				lc.MLPWidth = pl.IntermediateSize
			}
			if pl.SlidingWindow > 0 && lc.Type == Sliding {
				lc.Window = pl.SlidingWindow
			}
		}
		if lc.Type == Sliding && lc.Window <= 0 {
			return nil, fmt.Errorf("layer %d is sliding but sliding_window is %d", i, lc.Window)
		}
		if lc.HeadDim <= 0 || lc.HeadDim%2 != 0 {
			return nil, fmt.Errorf("layer %d: head dim %d must be positive and even", i, lc.HeadDim)
		}
		if lc.KVHeads <= 0 || c.NumHeads%lc.KVHeads != 0 {
			return nil, fmt.Errorf("layer %d: %d attention heads are not a multiple of %d KV heads", i, c.NumHeads, lc.KVHeads)
		}
		lc.Rope = ropes[lc.Type]
		if i >= firstShared {
			// KV sharing: the last earlier non-shared layer of the same type.
			lc.KVSharedOf = -1
			for j := firstShared - 1; j >= 0; j-- {
				if c.Layers[j].Type == lc.Type {
					lc.KVSharedOf = j
					break
				}
			}
			if lc.KVSharedOf < 0 {
				return nil, fmt.Errorf("layer %d shares KV but no earlier %s layer exists", i, lc.Type)
			}
			if c.UseDoubleWideMLP && widths[i] == c.IntermediateSize && !perLayerWidth(pl) {
				lc.MLPWidth = 2 * widths[i]
			}
		}
		c.Layers[i] = lc
	}
	if c.MaxPositionEmbeddings <= 0 {
		c.MaxPositionEmbeddings = 131072
	}
	return c, nil
}

// parsePerLayer reads per_layer_config in either form: a list with one entry
// per layer, or an object keyed by layer index holding only the overridden
// layers (what transformers 5.17's Gemma4TextConfig writes, e.g.
// {"3": {"head_dim": 64, "num_key_value_heads": 1}}); the latter is expanded
// to a list with empty entries for the other layers.
func parsePerLayer(raw json.RawMessage, layers int) ([]perLayer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var list []perLayer
	if trimmed := strings.TrimSpace(string(raw)); strings.HasPrefix(trimmed, "[") {
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("per_layer_config: %w", err)
		}
		return list, nil
	}
	var byIndex map[string]perLayer
	if err := json.Unmarshal(raw, &byIndex); err != nil {
		return nil, fmt.Errorf("per_layer_config: want a list or an object keyed by layer index: %w", err)
	}
	if len(byIndex) == 0 {
		return nil, nil
	}
	list = make([]perLayer, layers)
	for k, v := range byIndex {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= layers {
			return nil, fmt.Errorf("per_layer_config: key %q is not a layer index in [0, %d)", k, layers)
		}
		list[i] = v
	}
	return list, nil
}

func perLayerWidth(pl *perLayer) bool { return pl != nil && pl.IntermediateSize > 0 }

func parseLayerType(s string) (LayerType, error) {
	switch s {
	case "sliding_attention", "sliding":
		return Sliding, nil
	case "full_attention", "full", "global":
		return Full, nil
	}
	return 0, fmt.Errorf("unknown layer type %q (want sliding_attention or full_attention)", s)
}

// parseWidths reads intermediate_size as one int or one int per layer.
func parseWidths(raw json.RawMessage, layers int) ([]int, error) {
	out := make([]int, layers)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, fmt.Errorf("missing")
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		if one <= 0 {
			return nil, fmt.Errorf("must be positive, is %d", one)
		}
		for i := range out {
			out[i] = one
		}
		return out, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want an int or a list of ints, got %s", raw)
	}
	if len(many) != layers {
		return nil, fmt.Errorf("has %d entries for %d layers", len(many), layers)
	}
	for i, w := range many {
		if w <= 0 {
			return nil, fmt.Errorf("entry %d must be positive, is %d", i, w)
		}
	}
	return many, nil
}

// parseRopes reads rope_parameters keyed by layer type, falling back to the
// older flat keys (rope_theta for full layers, rope_local_base_freq for sliding).
func parseRopes(r *rawText) (map[LayerType]Rope, error) {
	out := map[LayerType]Rope{
		Sliding: {Type: "default", Theta: 10000, PartialRotary: 1},
		Full:    {Type: "proportional", Theta: 1e6, PartialRotary: 0.25},
	}
	if r.RopeLocalBaseFreq > 0 {
		out[Sliding] = Rope{Type: "default", Theta: r.RopeLocalBaseFreq, PartialRotary: 1}
	}
	if r.RopeTheta > 0 {
		f := out[Full]
		f.Theta = r.RopeTheta
		out[Full] = f
	}
	for key, raw := range r.RopeParameters {
		t, err := parseLayerType(key)
		if err != nil {
			return nil, fmt.Errorf("rope_parameters: %w", err)
		}
		var rp Rope
		if err := json.Unmarshal(raw, &rp); err != nil {
			return nil, fmt.Errorf("rope_parameters[%s]: %w", key, err)
		}
		if rp.Type == "" {
			rp.Type = "default"
		}
		switch rp.Type {
		case "default", "proportional":
		default:
			return nil, fmt.Errorf("rope_parameters[%s]: rope_type %q is not supported (want default or proportional)", key, rp.Type)
		}
		if rp.Theta <= 0 {
			return nil, fmt.Errorf("rope_parameters[%s]: rope_theta must be positive", key)
		}
		if rp.PartialRotary == 0 {
			rp.PartialRotary = 1
		}
		if rp.PartialRotary < 0 || rp.PartialRotary > 1 {
			return nil, fmt.Errorf("rope_parameters[%s]: partial_rotary_factor %g is outside (0, 1]", key, rp.PartialRotary)
		}
		out[t] = rp
	}
	return out, nil
}
