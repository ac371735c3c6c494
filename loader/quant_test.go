package loader

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseQuantConfig(t *testing.T) {
	cases := []struct {
		name string
		json string
		want *QuantConfig
	}{
		{"no quantization block", `{"model_type":"gemma4"}`, nil},
		{"null quantization block", `{"quantization":null}`, nil},
		{"defaults only", `{"quantization":{"bits":4,"group_size":64}}`, &QuantConfig{
			Default: QuantSpec{Bits: 4, Group: 64, Mode: "affine"}, Overrides: map[string]QuantSpec{}, Dense: map[string]bool{}}},
		{"defaults plus per-module overrides", `{"quantization":{"bits":4,"group_size":64,"mode":"affine",
			"language_model.model.layers.0.router.proj":{"bits":8,"group_size":64},
			"language_model.model.layers.4.self_attn.o_proj":{"bits":5,"group_size":128},
			"language_model.model.layers.1.mlp.up_proj":{"bits":3},
			"language_model.model.layers.2.self_attn.q_proj":{"group_size":32},
			"language_model.model.layers.3.mlp.gate_proj":false,
			"language_model.model.layers.3.mlp.up_proj":true}}`, &QuantConfig{
			Default: QuantSpec{Bits: 4, Group: 64, Mode: "affine"},
			Overrides: map[string]QuantSpec{
				"language_model.model.layers.0.router.proj":      {Bits: 8, Group: 64, Mode: "affine"},
				"language_model.model.layers.4.self_attn.o_proj": {Bits: 5, Group: 128, Mode: "affine"},
				"language_model.model.layers.1.mlp.up_proj":      {Bits: 3, Group: 64, Mode: "affine"}, // group from the default
				"language_model.model.layers.2.self_attn.q_proj": {Bits: 4, Group: 32, Mode: "affine"}, // bits from the default
			},
			Dense: map[string]bool{"language_model.model.layers.3.mlp.gate_proj": true},
		}},
		{"Hugging Face quantization_config", `{"quantization_config":{"quant_method":"mlx","bits":8,"group_size":32}}`, &QuantConfig{
			Default: QuantSpec{Bits: 8, Group: 32, Mode: "affine"}, Overrides: map[string]QuantSpec{}, Dense: map[string]bool{}}},
		{"quantization wins over quantization_config", `{"quantization":{"bits":4,"group_size":64},"quantization_config":{"bits":8,"group_size":32}}`, &QuantConfig{
			Default: QuantSpec{Bits: 4, Group: 64, Mode: "affine"}, Overrides: map[string]QuantSpec{}, Dense: map[string]bool{}}},
		{"overrides inherit the mode", `{"quantization":{"bits":4,"group_size":32,"mode":"mxfp4","a.b":{"bits":8},"c.d":{"mode":"affine"}}}`, &QuantConfig{
			Default:   QuantSpec{Bits: 4, Group: 32, Mode: "mxfp4"},
			Overrides: map[string]QuantSpec{"a.b": {Bits: 8, Group: 32, Mode: "mxfp4"}, "c.d": {Bits: 4, Group: 32, Mode: "affine"}},
			Dense:     map[string]bool{}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q, err := ParseQuantConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(q, tc.want) {
				t.Errorf("got  %+v\nwant %+v", q, tc.want)
			}
		})
	}
}

func TestParseQuantConfigErrors(t *testing.T) {
	cases := []struct {
		name, json string
		want       []string
	}{
		{"not JSON", `{"quantization":`, []string{"config.json"}},
		{"block not an object", `{"quantization":[4,64]}`, []string{"quantization"}},
		{"bits not a number", `{"quantization":{"bits":"four"}}`, []string{"quantization.bits"}},
		{"group not a number", `{"quantization":{"group_size":"big"}}`, []string{"quantization.group_size"}},
		{"mode not a string", `{"quantization":{"mode":4}}`, []string{"quantization.mode"}},
		{"override neither a bool nor an object", `{"quantization":{"bits":4,"group_size":64,"layers.0.mlp.up_proj":8}}`,
			[]string{`quantization["layers.0.mlp.up_proj"]`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q, err := ParseQuantConfig([]byte(tc.json))
			if err == nil {
				t.Fatalf("got %+v, want an error", q)
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestQuantFor checks which override a module path picks: exact keys, and
// keys without the "language_model."/"model." prefixes, never prefixes of
// other paths.
func TestQuantFor(t *testing.T) {
	q, err := ParseQuantConfig([]byte(`{"quantization":{"bits":4,"group_size":64,
		"language_model.model.layers.0.router.proj":{"bits":8,"group_size":64},
		"layers.1.mlp.up_proj":{"bits":3,"group_size":64},
		"model.layers.2.self_attn.q_proj":{"bits":8,"group_size":32}}}`))
	if err != nil {
		t.Fatal(err)
	}
	def := QuantSpec{Bits: 4, Group: 64, Mode: "affine"}
	cases := []struct {
		path string
		want QuantSpec
	}{
		{"language_model.model.layers.0.router.proj", QuantSpec{8, 64, "affine"}},
		{"language_model.model.layers.1.router.proj", def},
		{"language_model.model.layers.1.mlp.up_proj", QuantSpec{3, 64, "affine"}},
		{"model.language_model.layers.1.mlp.up_proj", QuantSpec{3, 64, "affine"}},
		{"model.layers.1.mlp.up_proj", QuantSpec{3, 64, "affine"}},
		{"language_model.model.layers.11.mlp.up_proj", def},
		{"language_model.model.layers.1.mlp.up_proj_extra", def},
		{"language_model.model.layers.2.self_attn.q_proj", QuantSpec{8, 32, "affine"}},
		{"model.layers.2.self_attn.q_proj", QuantSpec{8, 32, "affine"}},
		{"language_model.model.embed_tokens", def},
	}
	for _, tc := range cases {
		if got := q.For(tc.path); got != tc.want {
			t.Errorf("For(%q) = %+v, want %+v", tc.path, got, tc.want)
		}
	}
}

func TestQuantSpecCheck(t *testing.T) {
	const path = "language_model.model.layers.3.mlp.gate_proj"
	cases := []struct {
		spec QuantSpec
		want []string // nil: valid
	}{
		{QuantSpec{4, 64, "affine"}, nil},
		{QuantSpec{4, 64, ""}, nil},
		{QuantSpec{2, 32, "affine"}, nil},
		{QuantSpec{3, 64, "affine"}, nil},
		{QuantSpec{5, 128, "affine"}, nil},
		{QuantSpec{6, 32, "affine"}, nil},
		{QuantSpec{8, 128, "affine"}, nil},
		{QuantSpec{7, 64, "affine"}, []string{path, "7-bit", "not supported"}},
		{QuantSpec{1, 64, "affine"}, []string{path, "1-bit"}},
		{QuantSpec{16, 64, "affine"}, []string{path, "16-bit"}},
		{QuantSpec{0, 64, "affine"}, []string{path, "0-bit"}},
		{QuantSpec{4, 16, "affine"}, []string{path, "group size 16", "not supported"}},
		{QuantSpec{4, 256, "affine"}, []string{path, "group size 256"}},
		{QuantSpec{4, 0, "affine"}, []string{path, "group size 0"}},
		{QuantSpec{4, 32, "mxfp4"}, []string{path, `"mxfp4"`, "not supported yet"}},
		{QuantSpec{4, 16, "nvfp4"}, []string{path, `"nvfp4"`, "not supported yet"}},
		{QuantSpec{8, 32, "mxfp8"}, []string{path, `"mxfp8"`, "not supported yet"}},
		{QuantSpec{4, 64, "gptq"}, []string{path, `unknown quantization mode "gptq"`}},
	}
	for _, tc := range cases {
		err := tc.spec.Check(path)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%+v: %v", tc.spec, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%+v: no error, want %q", tc.spec, tc.want)
			continue
		}
		for _, s := range tc.want {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%+v: error %q does not contain %q", tc.spec, err, s)
			}
		}
	}
}

func TestQuantSummary(t *testing.T) {
	q, err := ParseQuantConfig(readCached(t, fixtureDir("tiny-moe-mixed")+"/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := []QuantSpec{{2, 32, "affine"}, {3, 64, "affine"}, {4, 64, "affine"}, {5, 64, "affine"}, {5, 128, "affine"},
		{6, 32, "affine"}, {6, 64, "affine"}, {8, 32, "affine"}, {8, 64, "affine"}}
	if got := q.Summary(); !reflect.DeepEqual(got, want) {
		t.Errorf("Summary() = %v, want %v", got, want)
	}
}

// setQuant sets key in both quantization blocks of a config (nil deletes).
func setQuant(key string, v any) func(map[string]any) {
	return func(cfg map[string]any) {
		for _, q := range quantBlocks(cfg) {
			if v == nil {
				delete(q, key)
			} else {
				q[key] = v
			}
		}
	}
}

// TestOpenQuantErrors opens quantized fixtures whose config.json was changed
// and checks the error names the module and says what is wrong.
func TestOpenQuantErrors(t *testing.T) {
	cases := []struct {
		name    string
		fixture string
		edit    func(map[string]any)
		want    []string
	}{
		{"mode mxfp4", "tiny-moe-4bit", setQuant("mode", "mxfp4"),
			[]string{"language_model.model.embed_tokens", `"mxfp4"`, "not supported yet"}},
		{"mode nvfp4 on one module", "tiny-moe-mixed",
			setQuant("language_model.model.layers.2.self_attn.q_proj", map[string]any{"bits": 4, "group_size": 16, "mode": "nvfp4"}),
			[]string{"layer 2", "language_model.model.layers.2.self_attn.q_proj", `"nvfp4"`, "not supported yet"}},
		{"mode mxfp8 on the router", "tiny-moe-4bit",
			setQuant("language_model.model.layers.0.router.proj", map[string]any{"bits": 8, "group_size": 32, "mode": "mxfp8"}),
			[]string{"layer 0", "language_model.model.layers.0.router.proj", `"mxfp8"`, "not supported yet"}},
		{"7 bits", "tiny-moe-4bit", setQuant("bits", 7),
			[]string{"language_model.model.embed_tokens", "7-bit affine quantization is not supported"}},
		{"group 16", "tiny-moe-4bit", setQuant("group_size", 16),
			[]string{"language_model.model.embed_tokens", "group size 16 is not supported"}},
		{"override with 7 bits", "tiny-moe-mixed",
			setQuant("language_model.model.layers.4.self_attn.o_proj", map[string]any{"bits": 7, "group_size": 128}),
			[]string{"language_model.model.layers.4.self_attn.o_proj", "7-bit"}},
		{"config says 8 bits for 4-bit data", "tiny-moe-4bit", setQuant("bits", 8),
			[]string{`"language_model.model.embed_tokens.weight"`, "[512 16]", "8 bits needs [512 32]", "declared bits/group disagree"}},
		{"config says 4 bits for the 8-bit router", "tiny-moe-4bit", setQuant("language_model.model.layers.0.router.proj", nil),
			[]string{`"language_model.model.layers.0.router.proj.weight"`, "[16 32]", "4 bits needs [16 16]"}},
		{"override says 4 bits for 6-bit experts", "tiny-moe-mixed", setQuant("language_model.model.layers.0.experts.switch_glu.down_proj", nil),
			[]string{`"language_model.model.layers.0.experts.switch_glu.down_proj.weight"`, "[16 128 12]", "needs [16 128 8]"}},
		{"config says group 32 for group-64 data", "tiny-moe-4bit", setQuant("group_size", 32),
			[]string{`"language_model.model.embed_tokens.scales"`, "group size 32 needs [512 4]"}},
		{"override says group 64 for group-128 data", "tiny-moe-mixed",
			setQuant("language_model.model.layers.4.self_attn.o_proj", map[string]any{"bits": 5, "group_size": 64}),
			[]string{"layer 4", `"language_model.model.layers.4.self_attn.o_proj.scales"`, "group size 64 needs [128 2]"}},
		{"no quantization block for quantized data", "tiny-moe-4bit", func(cfg map[string]any) {
			delete(cfg, "quantization")
			delete(cfg, "quantization_config")
		}, []string{"language_model.model.embed_tokens", "has .scales", "no quantization block"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := modelCopy(t, tc.fixture, nil)
			editConfig(t, dir, tc.edit)
			wantOpenErr(t, dir, tc.want...)
		})
	}
}
