package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

const (
	mlxL = "language_model.model.layers."
	hfL  = "model.language_model.layers."
)

// setHeaderLen overwrites the 8-byte header length of a file.
func setHeaderLen(n uint64) func([]byte) []byte {
	return func(b []byte) []byte {
		binary.LittleEndian.PutUint64(b[:8], n)
		return b
	}
}

// TestOpenBadFile feeds Open damaged copies of a fixture's safetensors file.
// Each case must give an error that names what is wrong, never a panic.
func TestOpenBadFile(t *testing.T) {
	const st = "model.safetensors"
	cases := []struct {
		name    string
		fixture string
		edit    func(*stFile)       // on the parsed file (nil: none)
		raw     func([]byte) []byte // then on the encoded bytes (nil: none)
		want    []string
	}{
		{name: "truncated file", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { return b[:len(b)-100] },
			want: []string{st, "shorter than its header says"}},
		{name: "truncated inside the header", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { return b[:1000] },
			want: []string{st, "runs past the end of the 1000-byte file"}},
		{name: "header length beyond the file", fixture: "tiny-moe-4bit",
			raw: func(b []byte) []byte {
				return setHeaderLen(uint64(len(b) - 7))(b)
			},
			want: []string{st, "runs past the end"}},
		{name: "header length over 100 MB", fixture: "tiny-moe-4bit",
			raw:  setHeaderLen(200_000_000),
			want: []string{st, "header length 200000000 exceeds the 100000000-byte limit"}},
		{name: "header length near 2^64", fixture: "tiny-moe-4bit",
			raw:  setHeaderLen(^uint64(0) - 3),
			want: []string{st, "exceeds"}},
		{name: "file shorter than the length field", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { return b[:5] },
			want: []string{st, "file of 5 bytes is shorter than the 8-byte header length"}},
		{name: "empty file", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { return nil },
			want: []string{st, "empty"}},
		{name: "header not JSON", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { copy(b[8:], "not json"); return b },
			want: []string{st, "header is not a JSON object"}},
		{name: "offsets past the data", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) {
				e := s.Entries[mlxL+"2.router.scale"]
				size := e.Offsets[1] - e.Offsets[0]
				e.Offsets = [2]uint64{uint64(len(s.Body)), uint64(len(s.Body)) + size}
			},
			want: []string{st, `"` + mlxL + `2.router.scale"`, "outside the"}},
		{name: "offsets reversed", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) {
				e := s.Entries[mlxL+"2.router.scale"]
				e.Offsets[0], e.Offsets[1] = e.Offsets[1], e.Offsets[0]
			},
			want: []string{st, `"` + mlxL + `2.router.scale"`, "outside the"}},
		{name: "overlapping offsets", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) {
				s.Entries[mlxL+"1.input_layernorm.weight"].Offsets = s.Entries[mlxL+"0.input_layernorm.weight"].Offsets
			},
			want: []string{st, mlxL + "0.input_layernorm.weight", mlxL + "1.input_layernorm.weight", "overlap"}},
		{name: "partly overlapping offsets", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) {
				e := s.Entries[mlxL+"1.input_layernorm.weight"]
				e.Offsets[0] += 2
				e.Offsets[1] += 2
			},
			want: []string{st, mlxL + "1.input_layernorm.weight", "overlap"}},
		{name: "offsets span the wrong size", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) { s.Entries[mlxL+"0.router.scale"].Shape = []int{64} },
			want: []string{st, mlxL + "0.router.scale", "BF16[64] needs 128 bytes but its offsets span 256"}},
		{name: "gap between tensors", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) { delete(s.Entries, mlxL+"3.layer_scalar") }, // its bytes stay, unclaimed
			want: []string{st, "belong to no tensor", "contiguous"}},
		{name: "bytes after the last tensor", fixture: "tiny-moe-4bit",
			raw:  func(b []byte) []byte { return append(b, make([]byte, 16)...) },
			want: []string{st, "16 bytes after the last tensor's data"}},
		{name: "unknown dtype", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) { s.Entries[mlxL+"0.router.scale"].DType = "Q4_K" },
			want: []string{st, mlxL + "0.router.scale", `"Q4_K"`}},
		{name: "three data offsets", fixture: "tiny-moe-4bit",
			raw: func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"data_offsets":[0,`), []byte(`"data_offsets":[0,0,`), 1)
			},
			want: []string{st, "data_offsets must have 2 values, has 3"}},
		{name: "negative dimension", fixture: "tiny-moe-4bit",
			edit: func(s *stFile) { s.Entries[mlxL+"0.router.scale"].Shape = []int{-128} },
			want: []string{st, mlxL + "0.router.scale", "bad dimension -128"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := modelCopy(t, tc.fixture, tc.edit)
			if tc.raw != nil {
				editFileBytes(t, dir, st, tc.raw)
			}
			wantOpenErr(t, dir, tc.want...)
		})
	}
}

// bf16 returns n zero bytes' worth of BF16 data.
func bf16(n int) []byte { return make([]byte, 2*n) }

// TestOpenWrongTensors changes tensors so they disagree with the config:
// shapes, dtypes, missing tensors.
func TestOpenWrongTensors(t *testing.T) {
	cases := []struct {
		name    string
		fixture string
		edit    func(*stFile)
		want    []string
	}{
		{"dense weight transposed", "tiny-moe", func(s *stFile) {
			s.Entries[hfL+"0.mlp.gate_proj.weight"].Shape = []int{128, 192}
		}, []string{"layer 0", `"` + hfL + `0.mlp.gate_proj.weight" has shape [128 192], the config says [192 128]`}},
		{"q_norm of the full layer's width on a sliding layer", "tiny-moe", func(s *stFile) {
			s.Put(hfL+"1.self_attn.q_norm.weight", "BF16", []int{64}, bf16(64))
		}, []string{"layer 1", hfL + "1.self_attn.q_norm.weight", "shape [64], the config says [32]"}},
		{"full layer's k_proj with two KV heads", "tiny-moe", func(s *stFile) {
			s.Put(hfL+"5.self_attn.k_proj.weight", "BF16", []int{128, 128}, bf16(128*128))
		}, []string{"layer 5", hfL + "5.self_attn.k_proj.weight", "the config says [64 128]"}},
		{"fused experts of the wrong width", "tiny-moe", func(s *stFile) {
			s.Entries[hfL+"2.experts.gate_up_proj"].Shape = []int{16, 64, 256}
		}, []string{"layer 2", hfL + "2.experts.gate_up_proj", "[16 64 256]", "the config says [16 128 128]"}},
		{"expert down of the wrong count", "tiny-moe", func(s *stFile) {
			s.Entries[hfL+"3.experts.down_proj"].Shape = []int{8, 256, 64}
		}, []string{"layer 3", hfL + "3.experts.down_proj", "the config says [16 128 64]"}},
		{"embedding of another vocab", "tiny-moe", func(s *stFile) {
			s.Entries["model.language_model.embed_tokens.weight"].Shape = []int{256, 256}
		}, []string{"model.language_model.embed_tokens.weight", "the config says [512 128]"}},
		{"per_expert_scale of another expert count", "tiny-moe-4bit", func(s *stFile) {
			s.Put(mlxL+"4.router.per_expert_scale", "BF16", []int{8}, bf16(8))
		}, []string{"layer 4", mlxL + "4.router.per_expert_scale", "the config says [16]"}},
		{"norm stored as I32", "tiny-moe-4bit", func(s *stFile) {
			s.Put(mlxL+"0.input_layernorm.weight", "I32", []int{128}, make([]byte, 4*128))
		}, []string{"layer 0", `"` + mlxL + `0.input_layernorm.weight" has dtype I32 (want a float type)`}},
		{"quantized weight stored as F32 with scales", "tiny-moe-4bit", func(s *stFile) {
			s.Entries[mlxL+"1.self_attn.q_proj.weight"].DType = "F32" // same size as U32
		}, []string{"layer 1", `quantized tensor "` + mlxL + `1.self_attn.q_proj.weight" has dtype F32 (want U32)`}},
		{"packed weight without scales", "tiny-moe-4bit", func(s *stFile) {
			s.Delete(mlxL + "2.mlp.up_proj.scales")
			s.Delete(mlxL + "2.mlp.up_proj.biases")
		}, []string{"layer 2", mlxL + "2.mlp.up_proj.weight", "has dtype U32 but no", ".scales"}},
		{"scales stored as U32", "tiny-moe-4bit", func(s *stFile) {
			s.Put(mlxL+"0.self_attn.k_proj.scales", "U32", []int{64, 2}, make([]byte, 4*128))
		}, []string{mlxL + "0.self_attn.k_proj.scales", "dtype U32 (want BF16, F16 or F32)"}},
		{"scales and biases of different dtypes", "tiny-moe-4bit", func(s *stFile) {
			s.Put(mlxL+"0.self_attn.k_proj.biases", "F32", []int{64, 2}, make([]byte, 4*128))
		}, []string{mlxL + "0.self_attn.k_proj", "scales are BF16 but biases are F32"}},
		{"layer_scalar that is not one float", "tiny-moe-4bit", func(s *stFile) {
			s.Put(mlxL+"3.layer_scalar", "BF16", []int{2}, bf16(2))
		}, []string{"layer 3", mlxL + "3.layer_scalar", "want one float"}},
		{"missing norm", "tiny-moe-4bit", func(s *stFile) {
			s.Delete(mlxL + "3.pre_feedforward_layernorm_2.weight")
		}, []string{"layer 3", `missing tensor "` + mlxL + `3.pre_feedforward_layernorm_2.weight"`}},
		{"missing final norm", "tiny-moe-4bit", func(s *stFile) {
			s.Delete("language_model.model.norm.weight")
		}, []string{`missing tensor "language_model.model.norm.weight"`}},
		{"missing v_proj on a sliding layer", "tiny-moe-4bit", func(s *stFile) {
			for _, suf := range []string{".weight", ".scales", ".biases"} {
				s.Delete(mlxL + "4.self_attn.v_proj" + suf)
			}
		}, []string{"layer 4", `missing tensor "` + mlxL + `4.self_attn.v_proj.weight"`}},
		{"missing k_proj on the full layer", "tiny-moe", func(s *stFile) {
			s.Delete(hfL + "5.self_attn.k_proj.weight")
		}, []string{"layer 5", `missing tensor "` + hfL + `5.self_attn.k_proj.weight"`}},
		{"missing expert tensor", "tiny-moe-mixed", func(s *stFile) {
			s.Delete(mlxL + "5.experts.switch_glu.up_proj.weight")
		}, []string{"layer 5", `missing tensor "` + mlxL + `5.experts.switch_glu.up_proj.weight"`}},
		{"missing fused expert tensor", "tiny-moe", func(s *stFile) {
			s.Delete(hfL + "1.experts.gate_up_proj")
		}, []string{"layer 1", `missing tensor "` + hfL + `1.experts.gate_up_proj"`}},
		{"missing HF expert down_proj", "tiny-moe", func(s *stFile) {
			s.Delete(hfL + "1.experts.down_proj")
		}, []string{"layer 1", "missing tensor", hfL + "1.experts.down_proj"}},
		{"missing biases", "tiny-moe-4bit", func(s *stFile) {
			s.Delete(mlxL + "1.mlp.gate_proj.biases")
		}, []string{"layer 1", `missing tensor "` + mlxL + `1.mlp.gate_proj.biases"`, "has scales"}},
		{"missing embedding", "tiny-moe-4bit", func(s *stFile) {
			for _, suf := range []string{".weight", ".scales", ".biases"} {
				s.Delete("language_model.model.embed_tokens" + suf)
			}
		}, []string{"embed_tokens.weight", "no embedding table found"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantOpenErr(t, modelCopy(t, tc.fixture, tc.edit), tc.want...)
		})
	}
}

// TestOpenBadDirectory covers the directory-level failures.
func TestOpenBadDirectory(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T) string
		want  []string
	}{
		{"missing directory", func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "nope")
		}, []string{"model directory", "nope"}},
		{"a file, not a directory", func(t *testing.T) string {
			return filepath.Join(modelCopy(t, "tiny-moe-4bit", nil), "config.json")
		}, []string{"is not a directory"}},
		{"missing config.json", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			os.Remove(filepath.Join(dir, "config.json"))
			return dir
		}, []string{"config.json"}},
		{"config.json of another model", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			editConfig(t, dir, func(c map[string]any) { c["model_type"] = "llama" })
			return dir
		}, []string{`model_type "llama" is not supported`}},
		{"config.json not JSON", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			writeFile(t, filepath.Join(dir, "config.json"), []byte("{"))
			return dir
		}, []string{"config.json"}},
		{"config.json that disagrees with the weights", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe", nil)
			editConfig(t, dir, func(c map[string]any) { c["text_config"].(map[string]any)["moe_intermediate_size"] = 32 })
			return dir
		}, []string{"layer 0", hfL + "0.experts.gate_up_proj", "the config says [16 64 128]"}},
		{"untied embeddings without lm_head", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			editConfig(t, dir, func(c map[string]any) { c["text_config"].(map[string]any)["tie_word_embeddings"] = false })
			return dir
		}, []string{`missing tensor "language_model.lm_head.weight"`}},
		{"no safetensors file", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			os.Remove(filepath.Join(dir, "model.safetensors"))
			return dir
		}, []string{"has no .safetensors file"}},
		{"only reference.safetensors", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			os.Rename(filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "reference.safetensors"))
			return dir
		}, []string{"has no .safetensors file"}},
		{"two safetensors files without an index", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			b := readCached(t, filepath.Join(fixtureDir("tiny-moe-4bit"), "model.safetensors"))
			os.Remove(filepath.Join(dir, "model.safetensors"))
			writeFile(t, filepath.Join(dir, "a.safetensors"), b)
			writeFile(t, filepath.Join(dir, "b.safetensors"), b)
			return dir
		}, []string{"has 2 .safetensors files but no model.safetensors.index.json"}},
		{"empty generation_config.json", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			writeFile(t, filepath.Join(dir, "generation_config.json"), nil)
			return dir
		}, []string{"generation_config.json"}},
		{"generation_config.json with a bad eos", func(t *testing.T) string {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			writeFile(t, filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id":"<eos>"}`))
			return dir
		}, []string{"generation_config.json", "eos_token_id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantOpenErr(t, tc.setup(t), tc.want...)
		})
	}
}

// writeShards writes parts of s as numbered shards of dir plus an index
// naming them, and removes model.safetensors.
func writeShards(t *testing.T, dir string, s *stFile, parts [][]string) []string {
	t.Helper()
	weightMap := map[string]string{}
	var names []string
	for i, part := range parts {
		name := "model-0000" + string(rune('1'+i)) + "-of-0000" + string(rune('0'+len(parts))) + ".safetensors"
		names = append(names, name)
		writeFile(t, filepath.Join(dir, name), s.Subset(part).Encode())
		for _, n := range part {
			weightMap[n] = name
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": len(s.Body)}, "weight_map": weightMap})
	writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), idx)
	os.Remove(filepath.Join(dir, "model.safetensors"))
	return names
}

// TestOpenSharded splits fixtures into two shards with an index and checks
// that they load to the same tensors, each a view into its own shard.
func TestOpenSharded(t *testing.T) {
	for _, fx := range []string{"tiny-moe", "tiny-moe-mixed"} {
		t.Run(fx, func(t *testing.T) {
			s := readST(t, fx)
			all := s.Names()
			// Alternate names between the shards so every layer spans both.
			var a, b []string
			for i, n := range all {
				if i%2 == 0 {
					a = append(a, n)
				} else {
					b = append(b, n)
				}
			}
			dir := modelCopy(t, fx, nil)
			shards := writeShards(t, dir, s, [][]string{a, b})

			m, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if len(m.Files) != 2 || filepath.Base(m.Files[0].Path) != shards[0] || filepath.Base(m.Files[1].Path) != shards[1] {
				t.Fatalf("files %v, want %v", m.Files, shards)
			}
			if len(m.Tensors) != len(all) {
				t.Errorf("%d tensors, want %d", len(m.Tensors), len(all))
			}
			inA := map[string]bool{}
			for _, n := range a {
				inA[n] = true
			}
			for name, tt := range m.Tensors {
				wantFile := 1
				if inA[name] {
					wantFile = 0
				}
				f := m.Files[tt.File]
				if tt.File != wantFile || unsafe.Pointer(&tt.Data[0]) != unsafe.Pointer(&f.Data[tt.Offset]) {
					t.Errorf("%s: file %d offset %d is not a view into shard %d", name, tt.File, tt.Offset, wantFile)
				}
				if !bytes.Equal(tt.Data, s.Data(name)) {
					t.Errorf("%s: bytes differ from the fixture", name)
				}
			}
			ref, err := Open(fixtureDir(fx))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			if !reflect.DeepEqual(m.Summarize().Quantization, ref.Summarize().Quantization) || m.Weights.Layout != ref.Weights.Layout {
				t.Errorf("sharded summary %+v, unsharded %+v", m.Summarize(), ref.Summarize())
			}
			if m.MappedBytes() != int64(len(m.Files[0].Data)+len(m.Files[1].Data)) || m.Summarize().Files != 2 {
				t.Errorf("MappedBytes %d for files of %d and %d bytes", m.MappedBytes(), len(m.Files[0].Data), len(m.Files[1].Data))
			}
		})
	}
}

// TestOpenBadShards covers index files that name missing or clashing shards.
func TestOpenBadShards(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string, s *stFile)
		want  []string
	}{
		{"index naming a missing shard", func(t *testing.T, dir string, s *stFile) {
			names := writeShards(t, dir, s, [][]string{s.Names()[:10], s.Names()[10:]})
			os.Remove(filepath.Join(dir, names[1]))
		}, []string{"model.safetensors.index.json names a missing shard", "model-00002-of-00002.safetensors"}},
		{"duplicate tensor across shards", func(t *testing.T, dir string, s *stFile) {
			all := s.Names()
			writeShards(t, dir, s, [][]string{all[:11], all[10:]}) // all[10] in both
		}, []string{`tensor "` + readST(t, "tiny-moe-4bit").Names()[10] + `" appears in both`,
			"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}},
		{"index not JSON", func(t *testing.T, dir string, s *stFile) {
			writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), []byte(`{"weight_map":`))
		}, []string{"model.safetensors.index.json"}},
		{"index with an empty weight_map", func(t *testing.T, dir string, s *stFile) {
			writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), []byte(`{"weight_map":{}}`))
		}, []string{"model.safetensors.index.json", "empty weight_map"}},
		{"index naming a shard outside the directory", func(t *testing.T, dir string, s *stFile) {
			writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), []byte(`{"weight_map":{"x":"../model.safetensors"}}`))
		}, []string{"model.safetensors.index.json", `"../model.safetensors"`, "plain file name"}},
		{"shards missing a tensor", func(t *testing.T, dir string, s *stFile) {
			all := s.Names()
			var keep []string
			for _, n := range all {
				if n != mlxL+"2.router.proj.biases" {
					keep = append(keep, n)
				}
			}
			writeShards(t, dir, s, [][]string{keep[:50], keep[50:]})
		}, []string{"layer 2", `missing tensor "` + mlxL + `2.router.proj.biases"`}},
		{"damaged second shard", func(t *testing.T, dir string, s *stFile) {
			names := writeShards(t, dir, s, [][]string{s.Names()[:10], s.Names()[10:]})
			editFileBytes(t, dir, names[1], func(b []byte) []byte { return b[:len(b)-1] })
		}, []string{"model-00002-of-00002.safetensors", "shorter than its header says"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := modelCopy(t, "tiny-moe-4bit", nil)
			tc.setup(t, dir, readST(t, "tiny-moe-4bit"))
			wantOpenErr(t, dir, tc.want...)
		})
	}
}

// TestOpenOptionalFiles checks generation_config.json, tokenizer.json, a
// lone safetensors file of another name, and the text-only HF layout.
func TestOpenOptionalFiles(t *testing.T) {
	t.Run("generation_config and tokenizer", func(t *testing.T) {
		dir := modelCopy(t, "tiny-moe-4bit", nil)
		writeFile(t, filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id":[1,106,50],"temperature":0.7,"top_k":64,"top_p":0.95}`))
		writeFile(t, filepath.Join(dir, "tokenizer.json"), []byte(`{}`))
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		want := &GenerationConfig{EOSTokenIDs: []int{1, 106, 50}, Temperature: 0.7, TopK: 64, TopP: 0.95}
		if !reflect.DeepEqual(m.Generation, want) {
			t.Errorf("generation config %+v, want %+v", m.Generation, want)
		}
		if !reflect.DeepEqual(m.Config.EOSTokenIDs, []int{1, 106}) {
			t.Errorf("config eos %v changed", m.Config.EOSTokenIDs)
		}
		if m.TokenizerPath != filepath.Join(dir, "tokenizer.json") || !m.Summarize().HasTokenizer {
			t.Errorf("TokenizerPath %q", m.TokenizerPath)
		}
	})
	t.Run("generation_config with an int eos", func(t *testing.T) {
		dir := modelCopy(t, "tiny-moe-4bit", nil)
		writeFile(t, filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id":106}`))
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if !reflect.DeepEqual(m.Generation.EOSTokenIDs, []int{106}) {
			t.Errorf("eos %v, want [106]", m.Generation.EOSTokenIDs)
		}
	})
	t.Run("one safetensors file of another name beside reference.safetensors", func(t *testing.T) {
		dir := modelCopy(t, "tiny-moe-4bit", nil)
		b := readCached(t, filepath.Join(fixtureDir("tiny-moe-4bit"), "reference.safetensors"))
		writeFile(t, filepath.Join(dir, "reference.safetensors"), b)
		if err := os.Rename(filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "weights.safetensors")); err != nil {
			t.Fatal(err)
		}
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if len(m.Files) != 1 || filepath.Base(m.Files[0].Path) != "weights.safetensors" {
			t.Errorf("files %v", m.Files)
		}
	})
	t.Run("text-only HF names", func(t *testing.T) {
		dir := modelCopy(t, "tiny-moe", func(s *stFile) {
			for _, n := range s.Names() {
				s.Rename(n, "model."+strings.TrimPrefix(n, "model.language_model."))
			}
		})
		editConfig(t, dir, func(c map[string]any) {
			text := c["text_config"].(map[string]any)
			for k := range c {
				delete(c, k)
			}
			for k, v := range text {
				c[k] = v
			}
		})
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if m.Weights.Layout != "hf-text" || m.Weights.Layers[5].V != nil || m.Weights.Layers[0].ExpUp.Path != "model.layers.0.experts.gate_up_proj.up" {
			t.Errorf("layout %q, layer 0 up %q", m.Weights.Layout, m.Weights.Layers[0].ExpUp.Path)
		}
		if !reflect.DeepEqual(m.Config.EOSTokenIDs, []int{1}) {
			t.Errorf("eos %v, want the text config's [1]", m.Config.EOSTokenIDs)
		}
	})
	t.Run("untied lm_head", func(t *testing.T) {
		dir := modelCopy(t, "tiny-moe-4bit", func(s *stFile) {
			for _, suf := range []string{".weight", ".scales", ".biases"} {
				src := "language_model.model.embed_tokens" + suf
				e := s.Entries[src]
				s.Put("language_model.lm_head"+suf, e.DType, e.Shape, append([]byte(nil), s.Data(src)...))
			}
		})
		editConfig(t, dir, func(c map[string]any) { c["text_config"].(map[string]any)["tie_word_embeddings"] = false })
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if h := m.Weights.LMHead; h == nil || h.Path != "language_model.lm_head" || h.Bits != 4 || h.N != 512 || h.K != 128 {
			t.Errorf("lm_head %+v", h)
		}
		if m.Summarize().Quantization["lm_head"] != "4-bit g64" {
			t.Errorf("summary %v", m.Summarize().Quantization)
		}
	})
}
