package loader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
)

// fixtureConfig is what the structural tests read from a fixture's
// config.json themselves, independently of ParseConfig and ParseQuantConfig.
type fixtureConfig struct {
	EOS   []int                      `json:"eos_token_id"`
	Quant map[string]json.RawMessage `json:"quantization"`
	Text  struct {
		Vocab         int      `json:"vocab_size"`
		Hidden        int      `json:"hidden_size"`
		Layers        int      `json:"num_hidden_layers"`
		Heads         int      `json:"num_attention_heads"`
		KVHeads       int      `json:"num_key_value_heads"`
		HeadDim       int      `json:"head_dim"`
		GlobalHeadDim int      `json:"global_head_dim"`
		GlobalKVHeads int      `json:"num_global_key_value_heads"`
		KEqV          bool     `json:"attention_k_eq_v"`
		Window        int      `json:"sliding_window"`
		LayerTypes    []string `json:"layer_types"`
		Intermediate  int      `json:"intermediate_size"`
		Experts       int      `json:"num_experts"`
		TopK          int      `json:"top_k_experts"`
		MoEWidth      int      `json:"moe_intermediate_size"`
		Softcap       float64  `json:"final_logit_softcapping"`
		Rope          map[string]struct {
			Type    string   `json:"rope_type"`
			Theta   float64  `json:"rope_theta"`
			Partial *float64 `json:"partial_rotary_factor"`
		} `json:"rope_parameters"`
	} `json:"text_config"`
}

func readFixtureConfig(t *testing.T, fixture string) *fixtureConfig {
	t.Helper()
	var fc fixtureConfig
	if err := json.Unmarshal(readCached(t, filepath.Join(fixtureDir(fixture), "config.json")), &fc); err != nil {
		t.Fatal(err)
	}
	return &fc
}

// spec returns the bits and group the config's quantization block gives the
// module at path (its override, else the defaults); 0, 0 when unquantized.
func (fc *fixtureConfig) spec(t *testing.T, path string) (bits, group int) {
	t.Helper()
	if fc.Quant == nil {
		return 0, 0
	}
	var s struct {
		Bits  int `json:"bits"`
		Group int `json:"group_size"`
	}
	json.Unmarshal(fc.Quant["bits"], &s.Bits)
	json.Unmarshal(fc.Quant["group_size"], &s.Group)
	if raw, ok := fc.Quant[path]; ok {
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("quantization[%q]: %v", path, err)
		}
	}
	return s.Bits, s.Group
}

// describe writes a weight's storage as "4-bit g64" or its dtype.
func describe(w *Weight) string {
	if w.Quantized() {
		return fmt.Sprintf("%d-bit g%d", w.Bits, w.Group)
	}
	return w.Data.DType.String()
}

// namedWeight is a weight with the logical shape the config gives it.
type namedWeight struct {
	w             *Weight
	what          string
	experts, n, k int
	absent        bool
}

// expectedWeights lists every linear weight of the model with the [E,] N, K
// that fc says it must have.
func expectedWeights(fc *fixtureConfig, w *Weights) []namedWeight {
	tc := fc.Text
	H, I, E, MI := tc.Hidden, tc.Intermediate, tc.Experts, tc.MoEWidth
	out := []namedWeight{{w: w.Embed, what: "embed", n: tc.Vocab, k: H}}
	for i := range w.Layers {
		l := &w.Layers[i]
		hd, kv := tc.HeadDim, tc.KVHeads
		full := tc.LayerTypes[i] == "full_attention"
		if full {
			hd = tc.GlobalHeadDim
			if tc.KEqV {
				kv = tc.GlobalKVHeads
			}
		}
		p := fmt.Sprintf("layer %d ", i)
		out = append(out,
			namedWeight{w: l.Q, what: p + "q", n: tc.Heads * hd, k: H},
			namedWeight{w: l.K, what: p + "k", n: kv * hd, k: H},
			namedWeight{w: l.V, what: p + "v", n: kv * hd, k: H, absent: full && tc.KEqV},
			namedWeight{w: l.O, what: p + "o", n: H, k: tc.Heads * hd},
			namedWeight{w: l.Gate, what: p + "gate", n: I, k: H},
			namedWeight{w: l.Up, what: p + "up", n: I, k: H},
			namedWeight{w: l.Down, what: p + "down", n: H, k: I},
			namedWeight{w: l.Router, what: p + "router", n: E, k: H},
			namedWeight{w: l.ExpGate, what: p + "experts gate", experts: E, n: MI, k: H},
			namedWeight{w: l.ExpUp, what: p + "experts up", experts: E, n: MI, k: H},
			namedWeight{w: l.ExpDown, what: p + "experts down", experts: E, n: H, k: MI},
		)
	}
	return out
}

// TestOpenStructure loads every fixture and checks the resolved structure
// against what the fixture's own config.json says.
func TestOpenStructure(t *testing.T) {
	cases := []struct {
		fixture string
		layout  string
		// spot pins some modules' storage exactly as the config's
		// "quantization" block (or the bf16 checkpoint) gives it.
		spot map[string]string
	}{
		{"tiny-moe", "hf", map[string]string{
			"model.language_model.embed_tokens":                       "BF16",
			"model.language_model.layers.0.router.proj":               "BF16",
			"model.language_model.layers.0.experts.gate_up_proj.gate": "BF16",
			"model.language_model.layers.0.experts.gate_up_proj.up":   "BF16",
			"model.language_model.layers.5.experts.down_proj":         "BF16",
		}},
		{"tiny-moe-4bit", "mlx", map[string]string{
			"language_model.model.embed_tokens":                          "4-bit g64",
			"language_model.model.layers.0.router.proj":                  "8-bit g64",
			"language_model.model.layers.5.router.proj":                  "8-bit g64",
			"language_model.model.layers.0.experts.switch_glu.down_proj": "4-bit g64",
			"language_model.model.layers.5.self_attn.o_proj":             "4-bit g64",
		}},
		{"tiny-moe-8bit", "mlx", map[string]string{
			"language_model.model.embed_tokens":                          "8-bit g64",
			"language_model.model.layers.2.router.proj":                  "8-bit g64",
			"language_model.model.layers.3.experts.switch_glu.gate_proj": "8-bit g64",
		}},
		{"tiny-moe-mixed", "mlx", map[string]string{
			"language_model.model.layers.0.experts.switch_glu.down_proj": "6-bit g64",
			"language_model.model.layers.0.mlp.down_proj":                "6-bit g64",
			"language_model.model.layers.0.self_attn.v_proj":             "6-bit g64",
			"language_model.model.layers.1.mlp.up_proj":                  "3-bit g64",
			"language_model.model.layers.2.self_attn.q_proj":             "8-bit g32",
			"language_model.model.layers.3.experts.switch_glu.gate_proj": "2-bit g32",
			"language_model.model.layers.4.self_attn.o_proj":             "5-bit g128",
			"language_model.model.layers.5.experts.switch_glu.up_proj":   "5-bit g64",
			"language_model.model.layers.5.self_attn.k_proj":             "6-bit g32",
			"language_model.model.layers.0.router.proj":                  "8-bit g64",
			"language_model.model.embed_tokens":                          "4-bit g64",
			"language_model.model.layers.1.self_attn.q_proj":             "4-bit g64",
			"language_model.model.layers.3.experts.switch_glu.up_proj":   "4-bit g64",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.fixture, func(t *testing.T) {
			fc := readFixtureConfig(t, tc.fixture)
			m, err := Open(fixtureDir(tc.fixture))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			c, w := m.Config, m.Weights

			if w.Layout != tc.layout {
				t.Errorf("layout %q, want %q", w.Layout, tc.layout)
			}
			if want := []int{1, 106}; !reflect.DeepEqual(c.EOSTokenIDs, want) || !reflect.DeepEqual(fc.EOS, want) {
				t.Errorf("config eos ids %v (config.json %v), want %v", c.EOSTokenIDs, fc.EOS, want)
			}
			if !reflect.DeepEqual(m.Generation.EOSTokenIDs, c.EOSTokenIDs) {
				t.Errorf("generation eos ids %v, want the config's %v", m.Generation.EOSTokenIDs, c.EOSTokenIDs)
			}
			if c.FinalLogitSoftcap != 30 || c.FinalLogitSoftcap != fc.Text.Softcap {
				t.Errorf("softcap %g, want 30", c.FinalLogitSoftcap)
			}
			if (m.Quant != nil) != (fc.Quant != nil) {
				t.Errorf("Quant = %v, config.json quantization block present: %v", m.Quant, fc.Quant != nil)
			}
			if c.VocabSize != fc.Text.Vocab || c.HiddenSize != fc.Text.Hidden || c.NumHeads != fc.Text.Heads ||
				c.NumExperts != fc.Text.Experts || c.TopKExperts != fc.Text.TopK || c.MoEIntermediateSize != fc.Text.MoEWidth ||
				!c.EnableMoE || !c.TieWordEmbeddings || w.LMHead != nil {
				t.Errorf("config %+v disagrees with config.json %+v", c, fc.Text)
			}

			// Layers: 5 sliding + 1 full, as layer_types says.
			if len(c.Layers) != fc.Text.Layers || len(w.Layers) != fc.Text.Layers {
				t.Fatalf("%d config layers, %d weight layers, config.json says %d", len(c.Layers), len(w.Layers), fc.Text.Layers)
			}
			count := map[LayerType]int{}
			for i, l := range c.Layers {
				count[l.Type]++
				if l.Type.String() != fc.Text.LayerTypes[i] {
					t.Errorf("layer %d type %s, config.json says %s", i, l.Type, fc.Text.LayerTypes[i])
				}
			}
			if count[Sliding] != 5 || count[Full] != 1 {
				t.Errorf("%d sliding and %d full layers, want 5 and 1", count[Sliding], count[Full])
			}
			for i := range w.Layers {
				l := &w.Layers[i]
				lc := l.Config
				if l.Index != i || !reflect.DeepEqual(lc, c.Layers[i]) {
					t.Errorf("layer %d: Index %d, Config %+v, want %+v", i, l.Index, lc, c.Layers[i])
				}
				rp := fc.Text.Rope[lc.Type.String()]
				wantPartial := 1.0
				if rp.Partial != nil {
					wantPartial = *rp.Partial
				}
				var want LayerConfig
				switch lc.Type {
				case Sliding:
					want = LayerConfig{Type: Sliding, HeadDim: 32, KVHeads: 2, KVSharedOf: -1, MLPWidth: 192, Window: 16,
						Rope: Rope{Type: "default", Theta: 1e4, PartialRotary: 1}}
				case Full:
					want = LayerConfig{Type: Full, HeadDim: 64, KVHeads: 1, KEqV: true, KVSharedOf: -1, MLPWidth: 192,
						Rope: Rope{Type: "proportional", Theta: 1e6, PartialRotary: 0.25}}
				}
				if !reflect.DeepEqual(lc, want) {
					t.Errorf("layer %d config %+v, want %+v", i, lc, want)
				}
				if lc.Rope.Type != rp.Type || lc.Rope.Theta != rp.Theta || lc.Rope.PartialRotary != wantPartial {
					t.Errorf("layer %d rope %+v, config.json says %+v (partial %g)", i, lc.Rope, rp, wantPartial)
				}
				// K=V: the full layer has no V weight; every layer has K.
				if (l.V == nil) != (lc.Type == Full) || l.K == nil {
					t.Errorf("layer %d (%s): K present %v, V present %v", i, lc.Type, l.K != nil, l.V != nil)
				}
				if l.QNorm == nil || l.QNorm.Shape[0] != lc.HeadDim || l.KNorm == nil || l.KNorm.Shape[0] != lc.HeadDim {
					t.Errorf("layer %d: q/k norms do not have the head dim %d", i, lc.HeadDim)
				}
				for _, n := range []*Tensor{l.InputNorm, l.PostAttnNorm, l.PreFFNorm, l.PostFFNorm, l.PreFFNorm2,
					l.PostFFNorm1, l.PostFFNorm2, l.RouterScale, l.PerExpertScale, l.LayerScalar} {
					if n == nil || n.DType != dtype.BF16 {
						t.Errorf("layer %d: a norm/scale is missing or not BF16: %v", i, n)
					}
				}
				if l.PLEGate != nil || l.PLEProj != nil || l.PLENorm != nil {
					t.Errorf("layer %d has PLE tensors", i)
				}
			}

			// Every linear weight: logical shape, storage as the config says,
			// packed/group shapes and per-expert strides.
			paths := map[string]*Weight{}
			for _, nw := range expectedWeights(fc, w) {
				if nw.absent {
					if nw.w != nil {
						t.Errorf("%s: present, want absent", nw.what)
					}
					continue
				}
				if nw.w == nil {
					t.Errorf("%s: missing", nw.what)
					continue
				}
				paths[nw.w.Path] = nw.w
				checkWeight(t, fc, nw)
			}
			for path, want := range tc.spot {
				wt, ok := paths[path]
				if !ok {
					t.Errorf("no weight with path %q", path)
					continue
				}
				if got := describe(wt); got != want {
					t.Errorf("%s is %s, want %s", path, got, want)
				}
			}
		})
	}
}

// checkWeight checks one weight against the config.
func checkWeight(t *testing.T, fc *fixtureConfig, nw namedWeight) {
	t.Helper()
	w := nw.w
	if w.N != nw.n || w.K != nw.k || w.Experts != nw.experts {
		t.Errorf("%s (%s): [E=%d] %d×%d, config says [E=%d] %d×%d", nw.what, w.Path, w.Experts, w.N, w.K, nw.experts, nw.n, nw.k)
		return
	}
	var lead []int
	if nw.experts > 0 {
		lead = []int{nw.experts}
	}
	shape := func(last int) []int { return append(append([]int(nil), lead...), nw.n, last) }
	bits, group := fc.spec(t, w.Path)
	if bits == 0 {
		// Dense bf16. The HF fused views are checked in TestFusedExpertViews.
		if w.Quantized() || w.Scales != nil || w.Biases != nil || w.Data.DType != dtype.BF16 {
			t.Errorf("%s: %s with scales %v, want dense BF16", w.Path, describe(w), w.Scales != nil)
		}
		if !reflect.DeepEqual(w.Data.Shape, shape(nw.k)) {
			t.Errorf("%s: data shape %v, want %v", w.Path, w.Data.Shape, shape(nw.k))
		}
		if nw.experts > 0 && !strings.HasSuffix(w.Path, ".gate") && !strings.HasSuffix(w.Path, ".up") {
			if want := int64(nw.n * nw.k * 2); w.DataStride != want || int64(len(w.Data.Data)) != want*int64(nw.experts) {
				t.Errorf("%s: stride %d over %d bytes, want %d per expert", w.Path, w.DataStride, len(w.Data.Data), want)
			}
		}
		return
	}
	if !w.Quantized() || w.Bits != bits || w.Group != group {
		t.Errorf("%s: %s, config.json says %d-bit g%d", w.Path, describe(w), bits, group)
		return
	}
	if w.Data.DType != dtype.U32 || w.Scales == nil || w.Biases == nil ||
		w.Scales.DType != dtype.BF16 || w.Biases.DType != dtype.BF16 {
		t.Errorf("%s: data %s, scales %v, biases %v", w.Path, w.Data.DType, w.Scales, w.Biases)
		return
	}
	if !reflect.DeepEqual(w.Data.Shape, shape(nw.k*bits/32)) {
		t.Errorf("%s: packed shape %v, want %v", w.Path, w.Data.Shape, shape(nw.k*bits/32))
	}
	for _, g := range []*Tensor{w.Scales, w.Biases} {
		if !reflect.DeepEqual(g.Shape, shape(nw.k/group)) {
			t.Errorf("%s: %s shape %v, want %v", w.Path, g.Name, g.Shape, shape(nw.k/group))
		}
	}
	if nw.experts > 0 {
		ds := int64(nw.n * nw.k * bits / 32 * 4)
		gs := int64(nw.n * nw.k / group * 2)
		E := int64(nw.experts)
		if w.DataStride != ds || int64(len(w.Data.Data)) != ds*E {
			t.Errorf("%s: data stride %d over %d bytes, want %d per expert", w.Path, w.DataStride, len(w.Data.Data), ds)
		}
		if w.GroupStride != gs || int64(len(w.Scales.Data)) != gs*E || int64(len(w.Biases.Data)) != gs*E {
			t.Errorf("%s: group stride %d, want %d", w.Path, w.GroupStride, gs)
		}
	} else if w.DataStride != 0 || w.GroupStride != 0 {
		t.Errorf("%s: 2D weight with strides %d, %d", w.Path, w.DataStride, w.GroupStride)
	}
}

// TestFusedExpertViews checks that HF's fused experts.gate_up_proj [E, 2I, H]
// becomes gate and up views into the same bytes: gate rows first, stride
// 2·I·H·2 bytes per expert, up starting I·H·2 bytes after gate.
func TestFusedExpertViews(t *testing.T) {
	m, err := Open(fixtureDir("tiny-moe"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const E, I, H = 16, 64, 128
	const stride, half = 2 * I * H * 2, I * H * 2
	for i := range m.Weights.Layers {
		l := &m.Weights.Layers[i]
		name := fmt.Sprintf("model.language_model.layers.%d.experts.gate_up_proj", i)
		fused := m.Tensors[name]
		if fused == nil || !reflect.DeepEqual(fused.Shape, []int{E, 2 * I, H}) {
			t.Fatalf("layer %d: fused tensor %v", i, fused)
		}
		for _, v := range []struct {
			w    *Weight
			part string
			off  int
		}{{l.ExpGate, "gate", 0}, {l.ExpUp, "up", half}} {
			w := v.w
			if w.Path != name+"."+v.part || w.Experts != E || w.N != I || w.K != H || w.Quantized() {
				t.Errorf("layer %d %s: %+v", i, v.part, w)
			}
			if w.DataStride != stride {
				t.Errorf("layer %d %s: DataStride %d, want %d", i, v.part, w.DataStride, stride)
			}
			if !reflect.DeepEqual(w.Data.Shape, []int{E, I, H}) || w.Data.DType != dtype.BF16 {
				t.Errorf("layer %d %s: view %s%v", i, v.part, w.Data.DType, w.Data.Shape)
			}
			if w.Data.Offset != fused.Offset+int64(v.off) || w.Data.File != fused.File {
				t.Errorf("layer %d %s: offset %d, want %d", i, v.part, w.Data.Offset, fused.Offset+int64(v.off))
			}
			if want := (E-1)*stride + half; len(w.Data.Data) != want {
				t.Errorf("layer %d %s: view of %d bytes, want %d", i, v.part, len(w.Data.Data), want)
			}
			// Zero copy: the view is the fused tensor's memory at the offset.
			if unsafe.Pointer(&w.Data.Data[0]) != unsafe.Pointer(&fused.Data[v.off]) {
				t.Errorf("layer %d %s: view does not alias the fused tensor at byte %d", i, v.part, v.off)
			}
			for e := 0; e < E; e++ {
				got := w.Data.Data[e*stride : e*stride+half]
				want := fused.Data[e*stride+v.off : e*stride+v.off+half]
				if !bytes.Equal(got, want) {
					t.Fatalf("layer %d %s expert %d: bytes differ from the fused tensor", i, v.part, e)
				}
			}
		}
		// down_proj [E, H, I] is a plain 3D tensor: one expert every H·I·2 bytes.
		if d := l.ExpDown; d.DataStride != H*I*2 || d.Data != m.Tensors[fmt.Sprintf("model.language_model.layers.%d.experts.down_proj", i)] {
			t.Errorf("layer %d down: stride %d, tensor %s", i, d.DataStride, d.Data.Name)
		}
	}
}

// TestTensorsAreViews checks that every tensor is a slice of its file's
// mapping at its Offset (no copy), that mappings start page-aligned and that
// tensor slices cannot grow into their neighbours.
func TestTensorsAreViews(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx, func(t *testing.T) {
			m, err := Open(fixtureDir(fx))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if len(m.Files) != 1 || filepath.Base(m.Files[0].Path) != "model.safetensors" {
				t.Fatalf("files %v, want model.safetensors only (not reference.safetensors)", m.Files)
			}
			f := m.Files[0]
			st, _ := os.Stat(filepath.Join(fixtureDir(fx), "model.safetensors"))
			if int64(len(f.Data)) != st.Size() || m.MappedBytes() != st.Size() {
				t.Errorf("mapped %d bytes (MappedBytes %d), file has %d", len(f.Data), m.MappedBytes(), st.Size())
			}
			if runtime.GOOS == "linux" || runtime.GOOS == "darwin" {
				if p := uintptr(unsafe.Pointer(&f.Data[0])); p%uintptr(os.Getpagesize()) != 0 {
					t.Errorf("mapping at %#x is not page-aligned", p)
				}
			}
			want := len(decodeST(t, readCached(t, filepath.Join(fixtureDir(fx), "model.safetensors"))).Entries)
			if len(m.Tensors) != want {
				t.Errorf("%d tensors, file has %d", len(m.Tensors), want)
			}
			for name, tt := range m.Tensors {
				if tt.Name != name || tt.File != 0 {
					t.Errorf("%s: Name %q File %d", name, tt.Name, tt.File)
				}
				if len(tt.Data) != tt.Numel()*tt.DType.Size() || cap(tt.Data) != len(tt.Data) {
					t.Errorf("%s: %d bytes (cap %d) for %s%v", name, len(tt.Data), cap(tt.Data), tt.DType, tt.Shape)
				}
				if tt.Offset < 8 || tt.Offset+int64(len(tt.Data)) > int64(len(f.Data)) {
					t.Errorf("%s: offset %d outside the file", name, tt.Offset)
					continue
				}
				if unsafe.Pointer(&tt.Data[0]) != unsafe.Pointer(&f.Data[tt.Offset]) {
					t.Errorf("%s: Data does not alias File.Data at offset %d", name, tt.Offset)
				}
			}
		})
	}
}

// TestCloseUnmaps checks that Close releases the mappings (on Linux, the file
// leaves /proc/self/maps) and is safe to call twice.
func TestCloseUnmaps(t *testing.T) {
	dir := modelCopy(t, "tiny-moe-4bit", nil)
	path, err := filepath.Abs(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	mapped := func() bool {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Skip("no /proc/self/maps")
		}
		return bytes.Contains(b, []byte(path))
	}
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" && !mapped() {
		t.Errorf("%s is not in /proc/self/maps while open", path)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if m.Files != nil || m.MappedBytes() != 0 {
		t.Errorf("after Close: %d files, %d mapped bytes", len(m.Files), m.MappedBytes())
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if runtime.GOOS == "linux" && mapped() {
		t.Errorf("%s is still mapped after Close", path)
	}
}

// TestRopeInvFreq checks the rotary frequencies: θ^(-2i/d) for rotating
// pairs, 0 beyond the partial fraction, with the full d as denominator.
func TestRopeInvFreq(t *testing.T) {
	cases := []struct {
		name string
		rope Rope
		d    int
		rot  int // pairs that rotate
	}{
		{"sliding default d=32", Rope{Type: "default", Theta: 1e4, PartialRotary: 1}, 32, 16},
		{"full proportional d=64 partial 0.25", Rope{Type: "proportional", Theta: 1e6, PartialRotary: 0.25}, 64, 8},
		{"26B full d=512 partial 0.25", Rope{Type: "proportional", Theta: 1e6, PartialRotary: 0.25}, 512, 64},
		{"26B sliding d=256", Rope{Type: "default", Theta: 1e4, PartialRotary: 1}, 256, 128},
		{"partial 0 means whole head", Rope{Type: "default", Theta: 1e4}, 16, 8},
		{"partial 0.5", Rope{Type: "proportional", Theta: 1e6, PartialRotary: 0.5}, 64, 16},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.rope.InvFreq(tc.d)
			if len(f) != tc.d/2 {
				t.Fatalf("%d frequencies, want %d", len(f), tc.d/2)
			}
			for i, got := range f {
				want := 0.0
				if i < tc.rot {
					want = math.Pow(tc.rope.Theta, -2*float64(i)/float64(tc.d))
				}
				if math.Abs(float64(got)-want) > 1e-6*want {
					t.Errorf("inv_freq[%d] = %g, want %g", i, got, want)
				}
			}
		})
	}
	// The fixtures' own layers.
	m, err := Open(fixtureDir("tiny-moe-4bit"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	full := m.Config.Layers[5]
	f := full.Rope.InvFreq(full.HeadDim)
	if len(f) != 32 || f[0] != 1 || f[7] == 0 || f[8] != 0 || f[31] != 0 {
		t.Errorf("full layer inv_freq %v: want 8 rotating pairs of 32", f)
	}
	if want := float32(math.Pow(1e6, -14.0/64)); math.Abs(float64(f[7]-want)) > 1e-6*float64(want) {
		t.Errorf("full layer inv_freq[7] = %g, want 1e6^(-14/64) = %g", f[7], want)
	}
	s := m.Config.Layers[0].Rope.InvFreq(m.Config.Layers[0].HeadDim)
	if len(s) != 16 || s[15] == 0 {
		t.Errorf("sliding layer inv_freq %v: want 16 rotating pairs", s)
	}
}

// TestSummary checks the summary facts of each fixture.
func TestSummary(t *testing.T) {
	cases := []struct {
		fixture string
		layout  string
		quant   map[string]string
	}{
		{"tiny-moe", "hf", map[string]string{"embed": "BF16", "attention": "BF16", "mlp": "BF16", "router": "BF16", "experts": "BF16"}},
		{"tiny-moe-4bit", "mlx", map[string]string{"embed": "4-bit g64", "attention": "4-bit g64", "mlp": "4-bit g64", "router": "8-bit g64", "experts": "4-bit g64"}},
		{"tiny-moe-8bit", "mlx", map[string]string{"embed": "8-bit g64", "attention": "8-bit g64", "mlp": "8-bit g64", "router": "8-bit g64", "experts": "8-bit g64"}},
		{"tiny-moe-mixed", "mlx", map[string]string{
			"embed":     "4-bit g64",
			"attention": "4-bit g64, 5-bit g128, 6-bit g32, 6-bit g64, 8-bit g32",
			"mlp":       "3-bit g64, 4-bit g64, 6-bit g64",
			"router":    "8-bit g64",
			"experts":   "2-bit g32, 4-bit g64, 5-bit g64, 6-bit g64",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.fixture, func(t *testing.T) {
			m, err := Open(fixtureDir(tc.fixture))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			s := m.Summarize()
			if s.Layout != tc.layout || s.Layers != 6 || s.LayersByType["sliding_attention"] != 5 || s.LayersByType["full_attention"] != 1 ||
				s.Experts != 16 || s.TopK != 4 || s.ExpertWidth != 64 || s.MLPWidth != 192 || s.Softcap != 30 ||
				s.Vocab != 512 || s.Hidden != 128 || s.SlidingWindow != 16 || s.Files != 1 || s.HasTokenizer ||
				s.ContextLength != 4096 || !reflect.DeepEqual(s.EOSTokenIDs, []int{1, 106}) {
				t.Errorf("summary %+v", s)
			}
			if !reflect.DeepEqual(s.Quantization, tc.quant) {
				t.Errorf("quantization %v, want %v", s.Quantization, tc.quant)
			}
			var b strings.Builder
			s.Print(&b)
			for _, want := range []string{"6 (5 sliding, window 16; 1 full)", "experts       16, top-4, width 64", "eos ids       [1 106]", "softcap       30"} {
				if !strings.Contains(b.String(), want) {
					t.Errorf("printed summary lacks %q:\n%s", want, b.String())
				}
			}
		})
	}
}

// TestOpenKVSharedAndPLE turns the bf16 fixture into an E2B-style model: the
// last two layers share K/V (no k/v tensors) with double-wide MLPs, and every
// layer has per-layer-embedding tensors.
func TestOpenKVSharedAndPLE(t *testing.T) {
	const P, PV, H, L = 8, 100, 128, 6
	dir := modelCopy(t, "tiny-moe", func(s *stFile) {
		// Layer 0 becomes a full layer: take layer 5's attention tensors.
		for _, n := range []string{"q_proj.weight", "k_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight"} {
			e := s.Entries[hfL+"5.self_attn."+n]
			s.Put(hfL+"0.self_attn."+n, e.DType, e.Shape, append([]byte(nil), s.Data(hfL+"5.self_attn."+n)...))
		}
		s.Delete(hfL + "0.self_attn.v_proj.weight")
		// Layers 4 and 5 share K/V and have MLPs of width 384.
		for _, i := range []string{"4", "5"} {
			for _, n := range []string{"k_proj.weight", "k_norm.weight", "v_proj.weight"} {
				s.Delete(hfL + i + ".self_attn." + n)
			}
			s.Put(hfL+i+".mlp.gate_proj.weight", "BF16", []int{384, H}, bf16(384*H))
			s.Put(hfL+i+".mlp.up_proj.weight", "BF16", []int{384, H}, bf16(384*H))
			s.Put(hfL+i+".mlp.down_proj.weight", "BF16", []int{H, 384}, bf16(384*H))
		}
		s.Put("model.language_model.embed_tokens_per_layer.weight", "BF16", []int{PV, L * P}, bf16(PV*L*P))
		s.Put("model.language_model.per_layer_model_projection.weight", "BF16", []int{L * P, H}, bf16(L*P*H))
		s.Put("model.language_model.per_layer_projection_norm.weight", "BF16", []int{P}, bf16(P))
		for i := 0; i < L; i++ {
			p := fmt.Sprintf("%s%d.", hfL, i)
			s.Put(p+"per_layer_input_gate.weight", "BF16", []int{P, H}, bf16(P*H))
			s.Put(p+"per_layer_projection.weight", "BF16", []int{H, P}, bf16(H*P))
			s.Put(p+"post_per_layer_input_norm.weight", "BF16", []int{H}, bf16(H))
		}
	})
	editConfig(t, dir, func(c map[string]any) {
		text := c["text_config"].(map[string]any)
		text["layer_types"] = []any{"full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"}
		text["num_kv_shared_layers"] = 2
		text["use_double_wide_mlp"] = true
		text["hidden_size_per_layer_input"] = P
		text["vocab_size_per_layer_input"] = PV
	})
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	w := m.Weights
	for i, want := range []int{-1, -1, -1, -1, 3, 0} {
		l := &w.Layers[i]
		if l.Config.KVSharedOf != want {
			t.Errorf("layer %d shares KV of %d, want %d", i, l.Config.KVSharedOf, want)
		}
		shared := want >= 0
		if shared != (l.K == nil && l.V == nil && l.KNorm == nil) {
			t.Errorf("layer %d (shared %v): K %v V %v KNorm %v", i, shared, l.K != nil, l.V != nil, l.KNorm != nil)
		}
		width := 192
		if shared {
			width = 384
		}
		if l.Gate.N != width || l.Up.N != width || l.Down.K != width {
			t.Errorf("layer %d MLP width %d/%d/%d, want %d", i, l.Gate.N, l.Up.N, l.Down.K, width)
		}
		if l.PLEGate == nil || l.PLEGate.N != P || l.PLEGate.K != H || l.PLEProj == nil || l.PLEProj.N != H || l.PLEProj.K != P ||
			l.PLENorm == nil || l.PLENorm.Shape[0] != H {
			t.Errorf("layer %d PLE: gate %+v proj %+v norm %v", i, l.PLEGate, l.PLEProj, l.PLENorm)
		}
	}
	if l := w.Layers[0]; l.Config.Type != Full || l.Config.HeadDim != 64 || l.V != nil || l.K == nil {
		t.Errorf("layer 0: %+v, K %v V %v", l.Config, l.K != nil, l.V != nil)
	}
	if w.PLEEmbed == nil || w.PLEEmbed.N != PV || w.PLEEmbed.K != L*P || w.PLEModelProj == nil || w.PLEModelProj.N != L*P ||
		w.PLEModelProj.K != H || w.PLEProjNorm == nil || w.PLEProjNorm.Shape[0] != P {
		t.Errorf("PLE tensors: embed %+v proj %+v norm %v", w.PLEEmbed, w.PLEModelProj, w.PLEProjNorm)
	}
}
