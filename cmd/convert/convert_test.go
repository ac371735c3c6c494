package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	fixturedata "github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/quant"
)

const testdata = "../../testdata"

var hfDir = filepath.Join(testdata, "tiny-moe")

// convertTo runs the command with args (-model and -out added unless given)
// and returns the output directory.
func convertTo(t *testing.T, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	all := append([]string{"-model", hfDir, "-out", out}, args...)
	var log bytes.Buffer
	if err := run(context.Background(), all, &log); err != nil {
		t.Fatalf("convert %s: %v\n%s", strings.Join(args, " "), err, log.String())
	}
	if s := strings.TrimSpace(log.String()); s != "" {
		t.Log(s)
	}
	return out
}

func open(t *testing.T, dir string) *loader.Model {
	t.Helper()
	m, err := loader.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func f32s(t *loader.Tensor) []float32 {
	out := make([]float32, t.Numel())
	for i := range out {
		switch t.DType {
		case dtype.BF16:
			out[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(t.Data[2*i:]))
		case dtype.F16:
			out[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(t.Data[2*i:]))
		default:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
	}
	return out
}

func u32s(t *loader.Tensor) []uint32 {
	out := make([]uint32, t.Numel())
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(t.Data[4*i:])
	}
	return out
}

// sources maps each output module of a conversion of tiny-moe to the bf16
// rows it was made from, through the converter's plan (whose names the
// header comparison checks against the fixtures).
func sources(t *testing.T) map[string]rowSource {
	t.Helper()
	hf := open(t, hfDir)
	p, err := makePlan(hf, &options{bits: 4, group: 64, recipe: recipeUniform, dtype: dtype.BF16})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]rowSource{}
	for _, it := range p.items {
		out[it.module] = it.src
	}
	return out
}

// diffs counts how a converted checkpoint differs from a fixture.
type diffs struct {
	tensors, sameBytes     int
	levels, levelDiffs     int
	boundary, offBoundary  int
	scaleDiffs, otherDiffs int
}

// compareWith checks that got has the fixture's tensor names, dtypes and
// shapes, and counts value differences. A differing level is on a rounding
// boundary when the source weight's exact level (w - bias)/scale under the
// fixture's scale and bias is within 1e-3 of a half-integer.
func compareWith(t *testing.T, got, want *loader.Model, src map[string]rowSource) diffs {
	t.Helper()
	var names []string
	for n := range want.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(got.Tensors) != len(want.Tensors) {
		var extra []string
		for n := range got.Tensors {
			if want.Tensors[n] == nil {
				extra = append(extra, n)
			}
		}
		t.Fatalf("%d tensors, the fixture has %d (extra: %v)", len(got.Tensors), len(want.Tensors), extra)
	}
	var d diffs
	for _, n := range names {
		g, w := got.Tensors[n], want.Tensors[n]
		if g == nil {
			t.Fatalf("missing tensor %s", n)
		}
		if g.DType != w.DType || !reflect.DeepEqual(g.Shape, w.Shape) {
			t.Fatalf("%s is %s%v, the fixture's is %s%v", n, g.DType, g.Shape, w.DType, w.Shape)
		}
		d.tensors++
		if bytes.Equal(g.Data, w.Data) {
			d.sameBytes++
			continue
		}
		module := strings.TrimSuffix(n, ".weight")
		switch {
		case g.DType == dtype.U32:
			spec := want.Quant.For(module)
			cols := w.Shape[len(w.Shape)-1] * 32 / spec.Bits
			qg, _ := quant.Unpack(u32s(g), spec.Bits, w.Numel()*32/spec.Bits)
			qw, _ := quant.Unpack(u32s(w), spec.Bits, len(qg))
			s, b := f32s(want.Tensors[module+".scales"]), f32s(want.Tensors[module+".biases"])
			rs := src[module]
			row := make([]float32, cols)
			for i := range qg {
				if qg[i] == qw[i] {
					continue
				}
				d.levelDiffs++
				decodeRow(row, rs.t, rs.start(i/cols), dtype.BF16)
				gi := i / spec.Group
				x := (float64(row[i%cols]) - float64(b[gi])) / float64(s[gi])
				if math.Abs(x-math.Floor(x)-0.5) < 1e-3 {
					d.boundary++
				} else {
					d.offBoundary++
				}
			}
		case strings.HasSuffix(n, ".scales") || strings.HasSuffix(n, ".biases"):
			d.scaleDiffs++
		default:
			d.otherDiffs++
			t.Errorf("dense tensor %s differs from the fixture", n)
		}
	}
	for n, w := range want.Tensors {
		if w.DType == dtype.U32 {
			d.levels += w.Numel() * 32 / want.Quant.For(strings.TrimSuffix(n, ".weight")).Bits
		}
	}
	return d
}

// reference reads a fixture's input ids and transformers logits [T·V].
func reference(t *testing.T, dir string) (ids []int32, logits []float32) {
	t.Helper()
	ref, err := fixturedata.Load(filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	return ref.InputIDs, ref.Logits
}

// logitsDiff runs the converted model on the CPU backend over the fixture's
// input and returns max |logits - reference|.
func logitsDiff(t *testing.T, dir, fixture string) float64 {
	t.Helper()
	ids, want := reference(t, fixture)
	src := open(t, dir)
	b := cpu.New()
	defer b.Close()
	m, err := model.New(src, b, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	logits, err := s.ForwardAll(context.Background(), ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	V := len(want) / len(ids)
	var worst float64
	for r, row := range logits {
		for j, v := range row {
			worst = max(worst, math.Abs(float64(v)-float64(want[r*V+j])))
		}
	}
	return worst
}

// mixedOverrides turns the per-module entries of tiny-moe-mixed's config
// into -override flags that name each module exactly.
func mixedOverrides(t *testing.T) []string {
	t.Helper()
	var args []string
	q := open(t, filepath.Join(testdata, "tiny-moe-mixed")).Quant
	for path, s := range q.Overrides {
		if strings.HasSuffix(path, "router.proj") {
			continue // the gemma4 recipe gives it 8 bits
		}
		args = append(args, "-override", fmt.Sprintf("^%s$=%d:%d", regexp.QuoteMeta(path), s.Bits, s.Group))
	}
	return args
}

// TestConvertMatchesFixtures converts the bf16 tiny-moe and compares with
// the MLX fixtures made outside this project: the same tensor names, dtypes
// and shapes; the same values except levels on a rounding boundary (counted
// and logged); the same config.json; and logits through gemmoe within 2e-2
// of the fixture's transformers reference.
func TestConvertMatchesFixtures(t *testing.T) {
	src := sources(t)
	tests := []struct {
		fixture string
		args    func(t *testing.T) []string
	}{
		{"tiny-moe-4bit", func(*testing.T) []string { return nil }},
		{"tiny-moe-8bit", func(*testing.T) []string { return []string{"-bits", "8"} }},
		{"tiny-moe-mixed", mixedOverrides},
	}
	for _, tc := range tests {
		t.Run(tc.fixture, func(t *testing.T) {
			fixture := filepath.Join(testdata, tc.fixture)
			out := convertTo(t, tc.args(t)...)
			got, want := open(t, out), open(t, fixture)
			d := compareWith(t, got, want, src)
			t.Logf("%d tensors, %d byte-identical; %d of %d levels differ (%d on a rounding boundary, %d not); %d scale/bias tensors differ",
				d.tensors, d.sameBytes, d.levelDiffs, d.levels, d.boundary, d.offBoundary, d.scaleDiffs)
			if d.offBoundary != 0 || d.scaleDiffs != 0 || d.otherDiffs != 0 {
				t.Errorf("values differ from the fixture away from rounding boundaries")
			}
			if d.boundary > d.levels/100000 {
				t.Errorf("%d levels on rounding boundaries differ: more than 1 in 100000", d.boundary)
			}
			var gotCfg, wantCfg map[string]any
			readJSON(t, filepath.Join(out, "config.json"), &gotCfg)
			readJSON(t, filepath.Join(fixture, "config.json"), &wantCfg)
			if !reflect.DeepEqual(gotCfg, wantCfg) {
				t.Errorf("config.json differs from the fixture's:\n got %v\nwant %v", gotCfg["quantization"], wantCfg["quantization"])
			}
			if md := metadata(t, filepath.Join(out, "model.safetensors")); md["format"] != "mlx" {
				t.Errorf("metadata %v, want format mlx", md)
			}
			diff := logitsDiff(t, out, fixture)
			t.Logf("max |logits - %s reference| = %.3g", tc.fixture, diff)
			if diff > 2e-2 {
				t.Errorf("logits differ from the reference by %.3g > 2e-2", diff)
			}
		})
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func metadata(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var h struct {
		Meta map[string]string `json:"__metadata__"`
	}
	if err := json.Unmarshal(b[8:8+n], &h); err != nil {
		t.Fatal(err)
	}
	return h.Meta
}

// TestRoundTrip dequantizes every quantized module of a conversion and
// compares it with the bf16 source: within half a step, except weights
// clipped at the end opposite the exact edge: within one step plus
// (2n+1)/256 steps for the bf16 rounding of scale and bias (see
// quant.TestQuantizeError). How many exceed one step is logged.
func TestRoundTrip(t *testing.T) {
	src := sources(t)
	for _, bits := range []string{"8", "4", "3"} {
		t.Run(bits+"bit", func(t *testing.T) {
			out := open(t, convertTo(t, "-bits", bits, "-recipe", "uniform"))
			var modules, clipped, beyond, total int
			var worst float64
			for n, w := range out.Tensors {
				if w.DType != dtype.U32 {
					continue
				}
				module := strings.TrimSuffix(n, ".weight")
				spec := out.Quant.For(module)
				rs := src[module]
				s, b := f32s(out.Tensors[module+".scales"]), f32s(out.Tensors[module+".biases"])
				deq, err := quant.Dequantize(u32s(w), s, b, rs.rows, rs.cols, spec.Bits, spec.Group)
				if err != nil {
					t.Fatal(err)
				}
				modules++
				nbins := float64(int(1)<<spec.Bits - 1)
				row := make([]float32, rs.cols)
				for r := range rs.rows {
					decodeRow(row, rs.t, rs.start(r), dtype.BF16)
					for c, v := range row {
						i := r*rs.cols + c
						g := i / spec.Group
						step := math.Abs(float64(s[g]))
						e := math.Abs(float64(deq[i]) - float64(v))
						x := (float64(v) - float64(b[g])) / float64(s[g])
						bound := step/2 + 1e-6*math.Abs(float64(v))
						if x < -0.5 || x > nbins+0.5 {
							clipped++
							bound = step*(1+(2*nbins+1)/256) + 1e-6*math.Abs(float64(v))
							if e > step*(1+1e-6) {
								beyond++
							}
						}
						total++
						worst = max(worst, e/step)
						if e > bound {
							t.Fatalf("%s[%d]: %g dequantizes to %g, %.3g steps off", module, i, v, deq[i], e/step)
						}
					}
				}
			}
			if modules != 66 {
				t.Errorf("%d quantized modules, want 66", modules)
			}
			t.Logf("%d modules, %d weights: %d clipped at a group's far end, %d of them by more than one step; worst error %.3g steps",
				modules, total, clipped, beyond, worst)
		})
	}
}

// TestRoundings: -rounding mlx and mlx-metal (MLX's own level rounding)
// give the fixture's tensors and, for mlx, its scales and biases; their
// levels differ by one step in a few places (logged).
func TestRoundings(t *testing.T) {
	src := sources(t)
	want := open(t, filepath.Join(testdata, "tiny-moe-4bit"))
	for _, r := range []string{"mlx", "mlx-metal"} {
		got := open(t, convertTo(t, "-rounding", r, "-q"))
		d := compareWith(t, got, want, src)
		t.Logf("-rounding %s: %d of %d levels differ from the fixture (%d on a rounding boundary); %d scale/bias tensors differ",
			r, d.levelDiffs, d.levels, d.boundary, d.scaleDiffs)
		if r == "mlx" && d.scaleDiffs != 0 {
			t.Errorf("-rounding mlx changed %d scale/bias tensors", d.scaleDiffs)
		}
	}
}

// TestShards: a small -shard-size splits the output into numbered files
// with an index; the loader reads them and every tensor equals the
// single-file conversion's.
func TestShards(t *testing.T) {
	one := open(t, convertTo(t, "-q"))
	dir := convertTo(t, "-shard-size", "400KB", "-q")
	var idx struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	readJSON(t, filepath.Join(dir, "model.safetensors.index.json"), &idx)
	files := map[string]bool{}
	for _, f := range idx.WeightMap {
		files[f] = true
	}
	if len(files) < 3 {
		t.Fatalf("%d shards, want several", len(files))
	}
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		t.Error("a sharded output also has model.safetensors")
	}
	for f := range files {
		if !regexp.MustCompile(`^model-\d{5}-of-\d{5}\.safetensors$`).MatchString(f) {
			t.Errorf("shard name %q", f)
		}
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() > 400e3+64e3 {
			t.Errorf("shard %s: %v, size %d", f, err, st.Size())
		}
	}
	got := open(t, dir)
	if len(got.Tensors) != len(one.Tensors) || len(idx.WeightMap) != len(one.Tensors) {
		t.Fatalf("%d tensors (%d in the index), single file has %d", len(got.Tensors), len(idx.WeightMap), len(one.Tensors))
	}
	var total int64
	for n, w := range one.Tensors {
		g := got.Tensors[n]
		if g == nil || !bytes.Equal(g.Data, w.Data) || g.DType != w.DType {
			t.Fatalf("tensor %s differs between the sharded and single-file outputs", n)
		}
		if g.Offset%int64(g.DType.Size()) != 0 {
			t.Errorf("%s at offset %d is not aligned to its %d-byte elements", n, g.Offset, g.DType.Size())
		}
		total += int64(len(g.Data))
	}
	if total != idx.Metadata.TotalSize {
		t.Errorf("index total_size %d, tensors hold %d bytes", idx.Metadata.TotalSize, total)
	}
}

// TestGroup128KeepsDense: at group 128, matrices whose input width is not a
// multiple of 128 (the dense MLP's down_proj, 192 wide, and the experts'
// down_proj, 64 wide) stay dense bf16, as mlx-lm leaves them; the router
// keeps the recipe's 8 bits in groups of 64, listed in the config; and the
// model loads and runs.
func TestGroup128KeepsDense(t *testing.T) {
	dir := convertTo(t, "-group-size", "128")
	m := open(t, dir)
	hf := open(t, hfDir)
	for _, l := range []int{0, 5} {
		p := fmt.Sprintf("language_model.model.layers.%d.", l)
		for _, n := range []string{"mlp.down_proj.weight", "experts.switch_glu.down_proj.weight"} {
			w := m.Tensors[p+n]
			if w == nil || w.DType != dtype.BF16 || m.Tensors[strings.TrimSuffix(p+n, "weight")+"scales"] != nil {
				t.Fatalf("%s: %v, want dense bf16", p+n, w)
			}
		}
		src := hf.Tensors[fmt.Sprintf("model.language_model.layers.%d.mlp.down_proj.weight", l)]
		if !bytes.Equal(m.Tensors[p+"mlp.down_proj.weight"].Data, src.Data) {
			t.Errorf("layer %d: dense mlp.down_proj differs from the source", l)
		}
		if s := m.Quant.For(p + "experts.switch_glu.gate_proj"); s.Bits != 4 || s.Group != 128 {
			t.Errorf("experts gate_proj at %+v, want 4-bit g128", s)
		}
		if s := m.Quant.For(p + "router.proj"); s.Bits != 8 || s.Group != 64 {
			t.Errorf("router at %+v, want 8-bit g64", s)
		}
		if sh := m.Tensors[p+"experts.switch_glu.gate_proj.scales"].Shape; !reflect.DeepEqual(sh, []int{16, 64, 1}) {
			t.Errorf("experts gate_proj scales shape %v", sh)
		}
	}
	ids, _ := reference(t, hfDir)
	b := cpu.New()
	defer b.Close()
	mm, err := model.New(m, b, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	s, err := mm.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	logits, err := s.ForwardAll(context.Background(), ids[:8], nil)
	if err != nil || len(logits) != 8 {
		t.Fatalf("forward: %v", err)
	}
}

// TestExtrasAndDType: tokenizer and generation files are copied, -dtype f16
// stores scales, biases and dense tensors as F16 (config dtype float16), and
// the uniform recipe quantizes the router at the default bits (no per-module
// entries).
func TestExtrasAndDType(t *testing.T) {
	in := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		if err := os.Symlink(mustAbs(t, filepath.Join(hfDir, f)), filepath.Join(in, f)); err != nil {
			t.Fatal(err)
		}
	}
	extras := map[string]string{"tokenizer.json": `{"model":{}}`, "generation_config.json": `{"eos_token_id":[1,106]}`, "chat_template.jinja": "{{ x }}"}
	for f, s := range extras {
		if err := os.WriteFile(filepath.Join(in, f), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := run(context.Background(), []string{"-model", in, "-out", out, "-dtype", "f16", "-recipe", "uniform", "-q"}, nil); err != nil {
		t.Fatal(err)
	}
	for f, s := range extras {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || string(b) != s {
			t.Errorf("%s not copied: %v", f, err)
		}
	}
	m := open(t, out)
	for n, w := range m.Tensors {
		if w.DType != dtype.U32 && w.DType != dtype.F16 {
			t.Fatalf("%s is %s, want F16 or U32", n, w.DType)
		}
	}
	if len(m.Quant.Overrides) != 0 {
		t.Errorf("uniform recipe wrote per-module entries %v", m.Quant.Overrides)
	}
	if s := m.Quant.For("language_model.model.layers.0.router.proj"); s.Bits != 4 || m.Tensors["language_model.model.layers.0.router.proj.scales"] == nil {
		t.Errorf("uniform recipe: router at %+v", s)
	}
	var cfg map[string]any
	readJSON(t, filepath.Join(out, "config.json"), &cfg)
	if cfg["dtype"] != "float16" {
		t.Errorf("config dtype %v, want float16", cfg["dtype"])
	}
	// Dense tensors are the bf16 source values rounded to f16.
	hf := open(t, hfDir)
	got := f32s(m.Tensors["language_model.model.norm.weight"])
	for i, v := range f32s(hf.Tensors["model.language_model.norm.weight"]) {
		if got[i] != dtype.F16ToF32(dtype.F32ToF16(v)) {
			t.Fatalf("norm[%d] = %g, want %g rounded to f16", i, got[i], v)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestErrors(t *testing.T) {
	notGemma := t.TempDir()
	os.WriteFile(filepath.Join(notGemma, "config.json"), []byte(`{"model_type": "llama", "hidden_size": 128}`), 0o644)
	noConfig := t.TempDir()
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "config.json"), []byte(`{}`), 0o644)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing dir", []string{"-model", "/nonexistent/model", "-out", "x"}, "model directory"},
		{"no config", []string{"-model", noConfig, "-out", "x"}, "config.json"},
		{"not gemma 4", []string{"-model", notGemma, "-out", "x"}, "not a Gemma 4 checkpoint"},
		{"already quantized", []string{"-model", filepath.Join(testdata, "tiny-moe-4bit"), "-out", "x"}, "already quantized"},
		{"bad bits", []string{"-model", hfDir, "-out", "x", "-bits", "7"}, "7 bits is not supported"},
		{"bad group", []string{"-model", hfDir, "-out", "x", "-group-size", "16"}, "group size 16 is not supported"},
		{"bad override", []string{"-model", hfDir, "-out", "x", "-override", "q_proj"}, "want 'REGEX=BITS:GROUP'"},
		{"bad override bits", []string{"-model", hfDir, "-out", "x", "-override", "q_proj=9:64"}, "9 bits"},
		{"bad override regex", []string{"-model", hfDir, "-out", "x", "-override", "q_proj(=4"}, "missing closing )"},
		{"override matches nothing", []string{"-model", hfDir, "-out", t.TempDir(), "-override", "qproj=8"}, "matches no quantizable module"},
		{"out holds a checkpoint", []string{"-model", hfDir, "-out", full}, "use -force"},
		{"out is the input", []string{"-model", hfDir, "-out", hfDir}, "is the input directory"},
		{"bad dtype", []string{"-model", hfDir, "-out", "x", "-dtype", "int8"}, "-dtype"},
		{"bad rounding", []string{"-model", hfDir, "-out", "x", "-rounding", "up"}, "unknown rounding"},
		{"bad shard size", []string{"-model", hfDir, "-out", "x", "-shard-size", "lots"}, "-shard-size"},
		{"no out", []string{"-model", hfDir}, "required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			err := run(context.Background(), tc.args, &log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// TestForce: -force replaces an earlier output, stale shards included.
func TestForce(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"-model", hfDir, "-out", out, "-q"}
	if err := run(context.Background(), append(args, "-shard-size", "400KB"), nil); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), append(args, "-force"), nil); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(out, "model*"))
	if len(left) != 1 || filepath.Base(left[0]) != "model.safetensors" {
		t.Fatalf("after -force: %v", left)
	}
	open(t, out)
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"5GiB", 5 << 30}, {"500MB", 500e6}, {"2000000", 2e6}, {"1.5 GB", 1.5e9}, {"64kib", 64 << 10}, {"10B", 10},
	}
	for _, tc := range tests {
		if got, err := parseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "0", "-1GB", "GB", "5XB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q): no error", bad)
		}
	}
}

func TestParseOverride(t *testing.T) {
	tests := []struct {
		in          string
		dense       bool
		bits, group int
	}{
		{`down_proj$=6:32`, false, 6, 32},
		{`embed_tokens=8`, false, 8, 64},
		{`layers\.0\.=dense`, true, 0, 64},
		{`a=b=2:128`, false, 2, 128}, // the last '=' separates
	}
	for _, tc := range tests {
		o, err := parseOverride(tc.in, 64)
		if err != nil || o.dense != tc.dense || (!tc.dense && (o.bits != tc.bits || o.group != tc.group)) {
			t.Errorf("parseOverride(%q) = %+v, %v", tc.in, o, err)
		}
	}
}

// TestCancel: an interrupted conversion returns the context's error and
// leaves no weight file behind.
func TestCancel(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := run(ctx, []string{"-model", hfDir, "-out", out, "-q"}, nil)
	if err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("err = %v, want context canceled", err)
	}
	if left, _ := filepath.Glob(filepath.Join(out, "*.safetensors")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// rewriteHF writes tiny-moe's weights to dir/model.safetensors with names
// passed through rename and extra bf16 tensors (name -> shape, zero-filled)
// appended.
func rewriteHF(t *testing.T, dir string, rename func(string) string, extra map[string][]int) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(hfDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(data)
	var header map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for k, v := range header {
		out[rename(k)] = v
	}
	body := append([]byte(nil), data[8+n:]...)
	for name, shape := range extra {
		size := 2
		for _, d := range shape {
			size *= d
		}
		out[name] = map[string]any{"dtype": "BF16", "shape": shape, "data_offsets": []int{len(body), len(body) + size}}
		body = append(body, make([]byte, size)...)
	}
	hj, _ := json.Marshal(out)
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	img := binary.LittleEndian.AppendUint64(nil, uint64(len(hj)))
	img = append(append(img, hj...), body...)
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDropsNonText: vision tower tensors, rotary buffers and a tied lm_head
// are left out and reported; the text weights are unchanged.
func TestDropsNonText(t *testing.T) {
	in := t.TempDir()
	rewriteHF(t, in, func(s string) string { return s }, map[string][]int{
		"model.vision_tower.patch_embedder.weight":                    {64, 64},
		"model.embed_vision.embedding_projection.weight":              {128, 64},
		"model.language_model.layers.0.self_attn.rotary_emb.inv_freq": {16},
		"lm_head.weight": {512, 128},
	})
	b, _ := os.ReadFile(filepath.Join(hfDir, "config.json"))
	os.WriteFile(filepath.Join(in, "config.json"), b, 0o644)
	o, err := parseFlags([]string{"-model", in, "-out", filepath.Join(t.TempDir(), "out"), "-q"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := convert(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.dropped) != 4 {
		t.Fatalf("dropped %v, want the 4 extra tensors", res.dropped)
	}
	got, want := open(t, o.out), open(t, filepath.Join(testdata, "tiny-moe-4bit"))
	for name, w := range want.Tensors {
		if g := got.Tensors[name]; g == nil || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("%s: missing or different", name)
		}
	}
	if len(got.Tensors) != len(want.Tensors) {
		t.Fatalf("%d tensors, want %d", len(got.Tensors), len(want.Tensors))
	}
}

// TestTextOnlyLayout: a text-only checkpoint (model_type gemma4_text,
// tensors model.layers.N..., as Gemma4ForCausalLM saves it) converts to the
// same tensors under model.* names, and gives the same logits.
func TestTextOnlyLayout(t *testing.T) {
	in := t.TempDir()
	rewriteHF(t, in, func(s string) string { return strings.Replace(s, "model.language_model.", "model.", 1) }, nil)
	var cfg map[string]any
	readJSON(t, filepath.Join(hfDir, "config.json"), &cfg)
	text := cfg["text_config"].(map[string]any)
	text["eos_token_id"] = cfg["eos_token_id"]
	if err := writeJSON(filepath.Join(in, "config.json"), text); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := run(context.Background(), []string{"-model", in, "-out", out, "-q"}, nil); err != nil {
		t.Fatal(err)
	}
	got, want := open(t, out), open(t, filepath.Join(testdata, "tiny-moe-4bit"))
	if got.Weights.Layout != "hf-text" || len(got.Tensors) != len(want.Tensors) {
		t.Fatalf("layout %s with %d tensors, want hf-text with %d", got.Weights.Layout, len(got.Tensors), len(want.Tensors))
	}
	for name, w := range want.Tensors {
		g := got.Tensors[strings.Replace(name, "language_model.model.", "model.", 1)]
		if g == nil || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("%s: missing or different", name)
		}
	}
	var q map[string]any
	readJSON(t, filepath.Join(out, "config.json"), &q)
	if _, ok := q["quantization"].(map[string]any)["model.layers.0.router.proj"]; !ok {
		t.Errorf("quantization block lacks model.layers.0.router.proj: %v", q["quantization"])
	}
	if d := logitsDiff(t, out, filepath.Join(testdata, "tiny-moe-4bit")); d > 2e-2 {
		t.Errorf("logits differ from the reference by %.3g", d)
	}
}
