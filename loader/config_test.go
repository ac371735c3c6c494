package loader

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// textConfig returns the fixtures' text config (gemma4_text, 6 layers: 5
// sliding + 1 full) as a JSON object for a test to edit.
func textConfig() map[string]any {
	return map[string]any{
		"model_type":                 "gemma4_text",
		"vocab_size":                 512,
		"hidden_size":                128,
		"num_hidden_layers":          6,
		"num_attention_heads":        4,
		"num_key_value_heads":        2,
		"head_dim":                   32,
		"global_head_dim":            64,
		"num_global_key_value_heads": 1,
		"attention_k_eq_v":           true,
		"sliding_window":             16,
		"intermediate_size":          192,
		"enable_moe_block":           true,
		"num_experts":                16,
		"top_k_experts":              4,
		"moe_intermediate_size":      64,
		"final_logit_softcapping":    30.0,
		"eos_token_id":               1,
		"layer_types":                []any{"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"},
		"rope_parameters": map[string]any{
			"full_attention":    map[string]any{"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
			"sliding_attention": map[string]any{"rope_theta": 1e4, "rope_type": "default"},
		},
	}
}

// textJSON is textConfig after edit, as JSON.
func textJSON(edit func(c map[string]any)) []byte {
	c := textConfig()
	if edit != nil {
		edit(c)
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// multimodalJSON wraps a text config the Hub way: model_type gemma4 with
// text_config, plus top-level keys.
func multimodalJSON(text map[string]any, top map[string]any) []byte {
	c := map[string]any{"model_type": "gemma4", "text_config": text,
		"vision_config": map[string]any{"model_type": "gemma4_vision", "hidden_size": 64}}
	for k, v := range top {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// fullAt returns the indexes of the full-attention layers.
func fullAt(c *Config) []int {
	out := []int{}
	for i, l := range c.Layers {
		if l.Type == Full {
			out = append(out, i)
		}
	}
	return out
}

func sharedOf(c *Config) []int {
	var out []int
	for _, l := range c.Layers {
		out = append(out, l.KVSharedOf)
	}
	return out
}

func widthsOf(c *Config) []int {
	var out []int
	for _, l := range c.Layers {
		out = append(out, l.MLPWidth)
	}
	return out
}

func TestParseConfig(t *testing.T) {
	sliding := LayerConfig{Type: Sliding, HeadDim: 32, KVHeads: 2, KVSharedOf: -1, MLPWidth: 192, Window: 16,
		Rope: Rope{Type: "default", Theta: 1e4, PartialRotary: 1}}
	full := LayerConfig{Type: Full, HeadDim: 64, KVHeads: 1, KEqV: true, KVSharedOf: -1, MLPWidth: 192,
		Rope: Rope{Type: "proportional", Theta: 1e6, PartialRotary: 0.25}}
	cases := []struct {
		name  string
		json  []byte
		check func(t *testing.T, c *Config)
	}{
		{"text-only gemma4_text", textJSON(nil), func(t *testing.T, c *Config) {
			want := []LayerConfig{sliding, sliding, sliding, sliding, sliding, full}
			if !reflect.DeepEqual(c.Layers, want) {
				t.Errorf("layers\n%+v\nwant\n%+v", c.Layers, want)
			}
			if c.ModelType != "gemma4_text" || c.VocabSize != 512 || c.HiddenSize != 128 || c.NumLayers != 6 ||
				c.NumHeads != 4 || c.NumKVHeads != 2 || c.HeadDim != 32 || c.GlobalHeadDim != 64 || c.NumGlobalKVHeads != 1 ||
				!c.AttentionKEqV || c.SlidingWindow != 16 || c.IntermediateSize != 192 || !c.EnableMoE ||
				c.NumExperts != 16 || c.TopKExperts != 4 || c.MoEIntermediateSize != 64 || c.FinalLogitSoftcap != 30 {
				t.Errorf("config %+v", c)
			}
			// Defaults for absent keys.
			if c.RMSNormEps != 1e-6 || c.HiddenActivation != "gelu_pytorch_tanh" || !c.TieWordEmbeddings ||
				c.BOSTokenID != 2 || c.PadTokenID != 0 || c.MaxPositionEmbeddings != 131072 ||
				c.PLEDim != 0 || c.PLEVocabSize != 512 || c.NumKVSharedLayers != 0 || c.UseDoubleWideMLP {
				t.Errorf("defaults %+v", c)
			}
			if !reflect.DeepEqual(c.EOSTokenIDs, []int{1}) {
				t.Errorf("eos %v, want [1]", c.EOSTokenIDs)
			}
		}},
		{"multimodal gemma4 with text_config: top-level eos list wins",
			multimodalJSON(textConfig(), map[string]any{"eos_token_id": []any{1, 106}}),
			func(t *testing.T, c *Config) {
				if c.ModelType != "gemma4_text" || len(c.Layers) != 6 || !reflect.DeepEqual(fullAt(c), []int{5}) {
					t.Errorf("config %+v", c)
				}
				if !reflect.DeepEqual(c.EOSTokenIDs, []int{1, 106}) {
					t.Errorf("eos %v, want [1 106]", c.EOSTokenIDs)
				}
			}},
		{"multimodal without top-level eos keeps the text one",
			multimodalJSON(textConfig(), nil),
			func(t *testing.T, c *Config) {
				if !reflect.DeepEqual(c.EOSTokenIDs, []int{1}) {
					t.Errorf("eos %v, want [1]", c.EOSTokenIDs)
				}
			}},
		{"multimodal text_config without its own model_type",
			multimodalJSON(func() map[string]any { c := textConfig(); delete(c, "model_type"); return c }(), nil),
			func(t *testing.T, c *Config) {
				if c.ModelType != "gemma4_text" || len(c.Layers) != 6 {
					t.Errorf("config %+v", c)
				}
			}},
		{"eos_token_id as an int", textJSON(func(c map[string]any) { c["eos_token_id"] = 106 }), func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.EOSTokenIDs, []int{106}) {
				t.Errorf("eos %v, want [106]", c.EOSTokenIDs)
			}
		}},
		{"eos_token_id as a list", textJSON(func(c map[string]any) { c["eos_token_id"] = []any{1, 106} }), func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.EOSTokenIDs, []int{1, 106}) {
				t.Errorf("eos %v, want [1 106]", c.EOSTokenIDs)
			}
		}},
		{"eos_token_id null", textJSON(func(c map[string]any) { c["eos_token_id"] = nil }), func(t *testing.T, c *Config) {
			if c.EOSTokenIDs != nil {
				t.Errorf("eos %v, want none", c.EOSTokenIDs)
			}
		}},
		{"eos_token_id absent", textJSON(func(c map[string]any) { delete(c, "eos_token_id") }), func(t *testing.T, c *Config) {
			if c.EOSTokenIDs != nil {
				t.Errorf("eos %v, want none", c.EOSTokenIDs)
			}
		}},
		{"default layer types, 8 layers: 5 and 7 full", textJSON(func(c map[string]any) {
			delete(c, "layer_types")
			c["num_hidden_layers"] = 8
		}), func(t *testing.T, c *Config) {
			if got := fullAt(c); !reflect.DeepEqual(got, []int{5, 7}) {
				t.Errorf("full layers %v, want [5 7]", got)
			}
			if c.Layers[7] != full || c.Layers[6] != sliding {
				t.Errorf("layers 6, 7: %+v, %+v", c.Layers[6], c.Layers[7])
			}
		}},
		{"default layer types, 12 layers: 5 and 11 full", textJSON(func(c map[string]any) {
			delete(c, "layer_types")
			c["num_hidden_layers"] = 12
		}), func(t *testing.T, c *Config) {
			if got := fullAt(c); !reflect.DeepEqual(got, []int{5, 11}) {
				t.Errorf("full layers %v, want [5 11]", got)
			}
		}},
		{"default layer types, 3 layers: the last is full", textJSON(func(c map[string]any) {
			delete(c, "layer_types")
			c["num_hidden_layers"] = 3
		}), func(t *testing.T, c *Config) {
			if got := fullAt(c); !reflect.DeepEqual(got, []int{2}) {
				t.Errorf("full layers %v, want [2]", got)
			}
		}},
		{"explicit layer_types win over the default rule", textJSON(func(c map[string]any) {
			c["layer_types"] = []any{"full_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention"}
		}), func(t *testing.T, c *Config) {
			if got := fullAt(c); !reflect.DeepEqual(got, []int{0, 2}) {
				t.Errorf("full layers %v, want [0 2]", got)
			}
		}},
		{"per_layer_config overrides", textJSON(func(c map[string]any) {
			delete(c, "layer_types") // default for 4 layers: only layer 3 full
			c["num_hidden_layers"] = 4
			c["per_layer_config"] = []any{
				map[string]any{},
				map[string]any{"layer_type": "full_attention", "head_dim": 128, "num_key_value_heads": 4, "attention_k_eq_v": false},
				map[string]any{"attention_type": "sliding_attention", "sliding_window": 8, "intermediate_size": 96},
				map[string]any{"layer_type": "sliding_attention"},
			}
		}), func(t *testing.T, c *Config) {
			want := []LayerConfig{
				sliding,
				{Type: Full, HeadDim: 128, KVHeads: 4, KVSharedOf: -1, MLPWidth: 192, Rope: full.Rope},
				{Type: Sliding, HeadDim: 32, KVHeads: 2, KVSharedOf: -1, MLPWidth: 96, Window: 8, Rope: sliding.Rope},
				sliding,
			}
			if !reflect.DeepEqual(c.Layers, want) {
				t.Errorf("layers\n%+v\nwant\n%+v", c.Layers, want)
			}
		}},
		{"K=V off: full layers keep num_key_value_heads and v_proj", textJSON(func(c map[string]any) {
			c["attention_k_eq_v"] = false
		}), func(t *testing.T, c *Config) {
			if l := c.Layers[5]; l.KEqV || l.KVHeads != 2 || l.HeadDim != 64 {
				t.Errorf("full layer %+v, want 2 KV heads of dim 64 without K=V", l)
			}
		}},
		{"no global_head_dim: full layers use head_dim", textJSON(func(c map[string]any) {
			delete(c, "global_head_dim")
		}), func(t *testing.T, c *Config) {
			if l := c.Layers[5]; l.HeadDim != 32 {
				t.Errorf("full layer head dim %d, want 32", l.HeadDim)
			}
		}},
		{"KV sharing with double-wide MLP", textJSON(func(c map[string]any) {
			c["num_hidden_layers"] = 10
			c["layer_types"] = []any{"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
				"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"}
			c["num_kv_shared_layers"] = 4
			c["use_double_wide_mlp"] = true
		}), func(t *testing.T, c *Config) {
			// Shared layers 6..9: sliding ones read layer 5, the full one layer 4.
			if got, want := sharedOf(c), []int{-1, -1, -1, -1, -1, -1, 5, 5, 5, 4}; !reflect.DeepEqual(got, want) {
				t.Errorf("KVSharedOf %v, want %v", got, want)
			}
			if got, want := widthsOf(c), []int{192, 192, 192, 192, 192, 192, 384, 384, 384, 384}; !reflect.DeepEqual(got, want) {
				t.Errorf("MLP widths %v, want %v", got, want)
			}
			if c.NumKVSharedLayers != 4 || !c.UseDoubleWideMLP {
				t.Errorf("config %+v", c)
			}
		}},
		{"KV sharing without double-wide MLP", textJSON(func(c map[string]any) {
			delete(c, "layer_types") // 12 layers: 5 and 11 full
			c["num_hidden_layers"] = 12
			c["num_kv_shared_layers"] = 4
		}), func(t *testing.T, c *Config) {
			if got, want := sharedOf(c), []int{-1, -1, -1, -1, -1, -1, -1, -1, 7, 7, 7, 5}; !reflect.DeepEqual(got, want) {
				t.Errorf("KVSharedOf %v, want %v", got, want)
			}
			for i, w := range widthsOf(c) {
				if w != 192 {
					t.Errorf("layer %d MLP width %d, want 192", i, w)
				}
			}
		}},
		{"double-wide MLP leaves a per_layer_config width alone", textJSON(func(c map[string]any) {
			c["num_hidden_layers"] = 4
			c["layer_types"] = []any{"full_attention", "sliding_attention", "sliding_attention", "sliding_attention"}
			c["num_kv_shared_layers"] = 2
			c["use_double_wide_mlp"] = true
			c["per_layer_config"] = []any{map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{"intermediate_size": 100}}
		}), func(t *testing.T, c *Config) {
			if got, want := widthsOf(c), []int{192, 192, 384, 100}; !reflect.DeepEqual(got, want) {
				t.Errorf("MLP widths %v, want %v", got, want)
			}
			if got, want := sharedOf(c), []int{-1, -1, 1, 1}; !reflect.DeepEqual(got, want) {
				t.Errorf("KVSharedOf %v, want %v", got, want)
			}
		}},
		{"per-layer embeddings (PLE)", textJSON(func(c map[string]any) {
			c["hidden_size_per_layer_input"] = 256
			c["vocab_size_per_layer_input"] = 262144
		}), func(t *testing.T, c *Config) {
			if c.PLEDim != 256 || c.PLEVocabSize != 262144 {
				t.Errorf("PLE dim %d vocab %d, want 256, 262144", c.PLEDim, c.PLEVocabSize)
			}
		}},
		{"PLE vocab defaults to the vocab", textJSON(func(c map[string]any) {
			c["hidden_size_per_layer_input"] = 64
		}), func(t *testing.T, c *Config) {
			if c.PLEDim != 64 || c.PLEVocabSize != 512 {
				t.Errorf("PLE dim %d vocab %d, want 64, 512", c.PLEDim, c.PLEVocabSize)
			}
		}},
		{"intermediate_size per layer", textJSON(func(c map[string]any) {
			c["intermediate_size"] = []any{10, 20, 30, 40, 50, 60}
		}), func(t *testing.T, c *Config) {
			if got, want := widthsOf(c), []int{10, 20, 30, 40, 50, 60}; !reflect.DeepEqual(got, want) || c.IntermediateSize != 10 {
				t.Errorf("MLP widths %v (IntermediateSize %d), want %v", got, c.IntermediateSize, want)
			}
		}},
		{"rope defaults without rope_parameters", textJSON(func(c map[string]any) {
			delete(c, "rope_parameters")
		}), func(t *testing.T, c *Config) {
			if c.Layers[0].Rope != sliding.Rope || c.Layers[5].Rope != full.Rope {
				t.Errorf("ropes %+v, %+v", c.Layers[0].Rope, c.Layers[5].Rope)
			}
		}},
		{"rope from the flat keys", textJSON(func(c map[string]any) {
			delete(c, "rope_parameters")
			c["rope_theta"] = 5e5
			c["rope_local_base_freq"] = 2e4
		}), func(t *testing.T, c *Config) {
			if got := c.Layers[0].Rope; got != (Rope{Type: "default", Theta: 2e4, PartialRotary: 1}) {
				t.Errorf("sliding rope %+v", got)
			}
			if got := c.Layers[5].Rope; got != (Rope{Type: "proportional", Theta: 5e5, PartialRotary: 0.25}) {
				t.Errorf("full rope %+v", got)
			}
		}},
		{"rope_parameters: type defaults to default, partial to 1", textJSON(func(c map[string]any) {
			c["rope_parameters"] = map[string]any{"full_attention": map[string]any{"rope_theta": 123.0}}
		}), func(t *testing.T, c *Config) {
			if got := c.Layers[5].Rope; got != (Rope{Type: "default", Theta: 123, PartialRotary: 1}) {
				t.Errorf("full rope %+v", got)
			}
			if c.Layers[0].Rope != sliding.Rope {
				t.Errorf("sliding rope %+v", c.Layers[0].Rope)
			}
		}},
		{"no softcap, untied, explicit bos and context", textJSON(func(c map[string]any) {
			delete(c, "final_logit_softcapping")
			c["tie_word_embeddings"] = false
			c["bos_token_id"] = 0
			c["max_position_embeddings"] = 4096
			c["rms_norm_eps"] = 1e-5
		}), func(t *testing.T, c *Config) {
			if c.FinalLogitSoftcap != 0 || c.TieWordEmbeddings || c.BOSTokenID != 0 || c.MaxPositionEmbeddings != 4096 || c.RMSNormEps != 1e-5 {
				t.Errorf("config %+v", c)
			}
		}},
		{"MoE block off", textJSON(func(c map[string]any) {
			c["enable_moe_block"] = false
			delete(c, "num_experts")
			delete(c, "top_k_experts")
			delete(c, "moe_intermediate_size")
		}), func(t *testing.T, c *Config) {
			if c.EnableMoE || c.NumExperts != 0 {
				t.Errorf("config %+v", c)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.json)
			if err != nil {
				t.Fatalf("ParseConfig: %v\n%s", err, tc.json)
			}
			if len(c.Layers) != c.NumLayers {
				t.Fatalf("%d layers resolved for %d", len(c.Layers), c.NumLayers)
			}
			tc.check(t, c)
		})
	}
}

// TestParseConfigErrors checks that bad configs give errors that say what is
// wrong.
func TestParseConfigErrors(t *testing.T) {
	set := func(k string, v any) []byte { return textJSON(func(c map[string]any) { c[k] = v }) }
	del := func(k string) []byte { return textJSON(func(c map[string]any) { delete(c, k) }) }
	cases := []struct {
		name string
		json []byte
		want []string
	}{
		{"unknown model_type", set("model_type", "llama"), []string{`"llama"`, "not supported"}},
		{"unknown multimodal model_type", []byte(`{"model_type":"gemma3","text_config":{}}`), []string{`"gemma3"`, "not supported"}},
		{"no model_type", del("model_type"), []string{"no model_type"}},
		{"gemma4 without text_config", []byte(`{"model_type":"gemma4"}`), []string{"without a text_config"}},
		{"text_config of another model", multimodalJSON(func() map[string]any {
			c := textConfig()
			c["model_type"] = "gemma3_text"
			return c
		}(), nil), []string{`"gemma3_text"`}},
		{"not JSON", []byte(`{"model_type": "gemma4_text",`), []string{"config.json"}},
		{"not an object", []byte(`[1, 2]`), []string{"config.json"}},
		{"string where a number goes", set("vocab_size", "512"), []string{"vocab_size"}},
		{"zero hidden_size", set("hidden_size", 0), []string{"hidden_size must be positive"}},
		{"missing head_dim", del("head_dim"), []string{"head_dim must be positive"}},
		{"negative layers", set("num_hidden_layers", -1), []string{"num_hidden_layers must be positive"}},
		{"missing vocab_size", del("vocab_size"), []string{"vocab_size must be positive"}},
		{"layer_types too short", set("layer_types", []any{"sliding_attention", "full_attention"}), []string{"layer_types has 2 entries for 6 layers"}},
		{"unknown layer type", set("layer_types", []any{"sliding_attention", "sliding_attention", "chunked_attention", "sliding_attention", "sliding_attention", "full_attention"}),
			[]string{"layer_types[2]", `"chunked_attention"`}},
		{"heads not a multiple of KV heads", set("num_key_value_heads", 3), []string{"layer 0", "4 attention heads are not a multiple of 3 KV heads"}},
		{"heads not a multiple of global KV heads", set("num_global_key_value_heads", 3), []string{"layer 5", "not a multiple of 3 KV heads"}},
		{"odd head_dim", set("head_dim", 31), []string{"layer 0", "head dim 31 must be positive and even"}},
		{"odd global_head_dim", set("global_head_dim", 63), []string{"layer 5", "head dim 63"}},
		{"no sliding_window", del("sliding_window"), []string{"layer 0 is sliding but sliding_window is 0"}},
		{"top_k above num_experts", set("top_k_experts", 17), []string{"top_k_experts", "17"}},
		{"MoE without expert width", del("moe_intermediate_size"), []string{"moe_intermediate_size"}},
		{"MoE without experts", set("num_experts", 0), []string{"num_experts"}},
		{"all layers KV-shared", set("num_kv_shared_layers", 6), []string{"num_kv_shared_layers 6 is out of range for 6 layers"}},
		{"negative KV-shared layers", set("num_kv_shared_layers", -1), []string{"num_kv_shared_layers -1"}},
		{"shared full layer without a full donor", set("num_kv_shared_layers", 1), []string{"layer 5 shares KV but no earlier full_attention layer"}},
		{"missing intermediate_size", del("intermediate_size"), []string{"intermediate_size: missing"}},
		{"zero intermediate_size", set("intermediate_size", 0), []string{"intermediate_size", "must be positive"}},
		{"intermediate_size list too short", set("intermediate_size", []any{1, 2}), []string{"intermediate_size", "2 entries for 6 layers"}},
		{"intermediate_size list with a zero", set("intermediate_size", []any{1, 2, 3, 0, 5, 6}), []string{"intermediate_size", "entry 3 must be positive"}},
		{"intermediate_size of the wrong type", set("intermediate_size", "big"), []string{"intermediate_size", "want an int or a list"}},
		{"unsupported activation", set("hidden_activation", "relu"), []string{`hidden_activation "relu"`}},
		{"attention bias", set("attention_bias", true), []string{"attention_bias"}},
		{"per_layer_config of the wrong length", set("per_layer_config", []any{map[string]any{}}), []string{"per_layer_config has 1 entries for 6 layers"}},
		{"per_layer_config with an unknown type", set("per_layer_config", []any{map[string]any{}, map[string]any{"layer_type": "local"},
			map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}}), []string{"per_layer_config[1]", `"local"`}},
		{"unsupported rope_type", set("rope_parameters", map[string]any{"full_attention": map[string]any{"rope_type": "yarn", "rope_theta": 1e6}}),
			[]string{"rope_parameters[full_attention]", `rope_type "yarn"`}},
		{"rope_theta zero", set("rope_parameters", map[string]any{"sliding_attention": map[string]any{"rope_type": "default"}}),
			[]string{"rope_parameters[sliding_attention]", "rope_theta must be positive"}},
		{"partial_rotary_factor above 1", set("rope_parameters", map[string]any{"full_attention": map[string]any{"rope_theta": 1e6, "partial_rotary_factor": 1.5}}),
			[]string{"partial_rotary_factor 1.5"}},
		{"rope_parameters for an unknown layer type", set("rope_parameters", map[string]any{"chunked": map[string]any{"rope_theta": 1e6}}),
			[]string{"rope_parameters", `"chunked"`}},
		{"eos_token_id of the wrong type", set("eos_token_id", "</s>"), []string{"eos_token_id", "want an int or a list of ints"}},
		{"top-level eos_token_id of the wrong type", multimodalJSON(textConfig(), map[string]any{"eos_token_id": map[string]any{}}),
			[]string{"eos_token_id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.json)
			if err == nil {
				t.Fatalf("ParseConfig succeeded (%+v), want an error containing %q", c, tc.want)
			}
			if c != nil {
				t.Errorf("ParseConfig returned a config along with %v", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestConfigJSON checks that a resolved config marshals with the
// config.json spelling of layer types (what `generate -info -json` prints).
func TestConfigJSON(t *testing.T) {
	c, err := ParseConfig(textJSON(nil))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"type":"full_attention"`) || !strings.Contains(string(b), `"type":"sliding_attention"`) {
		t.Errorf("marshalled config lacks the layer type names: %s", b)
	}
}
