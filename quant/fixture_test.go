package quant_test

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/quant"
)

const testdata = "../testdata"

// source returns the rows of the bf16 Hugging Face tensor that the MLX module
// was quantized from (experts split from gate_up_proj, gate rows first), as
// float32 [rows, cols].
func source(t *testing.T, hf *loader.Model, module string) (w []float32, rows, cols int) {
	t.Helper()
	name := "model.language_model." + strings.TrimPrefix(module, "language_model.model.")
	part := ""
	switch {
	case strings.HasSuffix(name, ".experts.switch_glu.gate_proj"), strings.HasSuffix(name, ".experts.switch_glu.up_proj"):
		part = name[strings.LastIndex(name, ".")+1:]
		name = name[:strings.LastIndex(name, "switch_glu.")] + "gate_up_proj"
	case strings.HasSuffix(name, ".experts.switch_glu.down_proj"):
		name = strings.TrimSuffix(name, "switch_glu.down_proj") + "down_proj"
	default:
		name += ".weight"
	}
	src := hf.Tensors[name]
	if src == nil || src.DType != dtype.BF16 {
		t.Fatalf("%s: no bf16 source tensor %s", module, name)
	}
	all := make([]float32, src.Numel())
	for i := range all {
		all[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(src.Data[2*i:]))
	}
	cols = src.Shape[len(src.Shape)-1]
	if part == "" {
		return all, len(all) / cols, cols
	}
	// [E, 2I, H] -> gate [E, I, H] or up [E, I, H].
	E, I := src.Shape[0], src.Shape[1]/2
	off := 0
	if part == "up_proj" {
		off = I
	}
	for e := range E {
		w = append(w, all[(e*2*I+off)*cols:(e*2*I+off+I)*cols]...)
	}
	return w, E * I, cols
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

// tally counts how a quantization differs from a fixture's.
type tally struct {
	modules, levels                 int
	scales, biases                  int // groups whose stored scale / bias differ
	levelDiffs, boundary, offBounds int // differing levels; of them on / off a rounding boundary
	worstLevel                      int
}

// compare quantizes every module of the MLX fixture from the bf16 weights
// with rounding r and counts the differences. A differing level is "on a
// rounding boundary" when the weight's exact level (w - bias)/scale under
// the fixture's own scale and bias is within 1e-3 of a half-integer.
func compare(t *testing.T, hf, fx *loader.Model, r quant.Rounding) tally {
	var names []string
	for name := range fx.Tensors {
		if strings.HasSuffix(name, ".scales") {
			names = append(names, strings.TrimSuffix(name, ".scales"))
		}
	}
	sort.Strings(names)
	var c tally
	for _, module := range names {
		spec := fx.Quant.For(module)
		w, rows, cols := source(t, hf, module)
		p := quant.Params{Bits: spec.Bits, Group: spec.Group, Type: dtype.BF16, Rounding: r}
		packed := make([]uint32, rows*quant.PackedWords(cols, spec.Bits))
		scales := make([]float32, rows*cols/spec.Group)
		biases := make([]float32, len(scales))
		if err := p.QuantizeInto(packed, scales, biases, w, rows, cols); err != nil {
			t.Fatalf("%s: %v", module, err)
		}
		wantPacked := u32s(fx.Tensors[module+".weight"])
		wantS, wantB := f32s(fx.Tensors[module+".scales"]), f32s(fx.Tensors[module+".biases"])
		if len(wantPacked) != len(packed) || len(wantS) != len(scales) {
			t.Fatalf("%s: fixture has %d words and %d groups, we made %d and %d", module, len(wantPacked), len(wantS), len(packed), len(scales))
		}
		c.modules++
		for g := range scales {
			if scales[g] != wantS[g] {
				c.scales++
			}
			if biases[g] != wantB[g] {
				c.biases++
			}
		}
		got, _ := quant.Unpack(packed, spec.Bits, rows*cols)
		want, _ := quant.Unpack(wantPacked, spec.Bits, rows*cols)
		c.levels += len(got)
		for i := range got {
			if got[i] == want[i] {
				continue
			}
			c.levelDiffs++
			c.worstLevel = max(c.worstLevel, abs(int(got[i])-int(want[i])))
			g := i / spec.Group
			x := (float64(w[i]) - float64(wantB[g])) / float64(wantS[g])
			if math.Abs(x-math.Floor(x)-0.5) < 1e-3 {
				c.boundary++
			} else {
				c.offBounds++
			}
		}
	}
	return c
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func open(t *testing.T, name string) *loader.Model {
	t.Helper()
	m, err := loader.Open(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestFixtures is the outside oracle: quantizing the bf16 weights of
// testdata/tiny-moe reproduces the packed words, scales and biases of
// tiny-moe-4bit (4-bit g64, router.proj 8-bit), tiny-moe-8bit (8-bit g64)
// and tiny-moe-mixed (every width 2..8, groups 32/64/128), which were made
// outside this project. Levels may differ only where a weight sits on a
// rounding boundary; the counts are logged (they are 0 with Stored rounding).
// MLX's own roundings are measured against the same fixtures and logged.
func TestFixtures(t *testing.T) {
	hf := open(t, "tiny-moe")
	for _, name := range []string{"tiny-moe-4bit", "tiny-moe-8bit", "tiny-moe-mixed"} {
		t.Run(name, func(t *testing.T) {
			fx := open(t, name)
			c := compare(t, hf, fx, quant.Stored)
			t.Logf("stored rounding: %d modules, %d levels: %d differ (%d on a rounding boundary), %d scales and %d biases differ",
				c.modules, c.levels, c.levelDiffs, c.boundary, c.scales, c.biases)
			if c.modules != 66 {
				t.Errorf("%d quantized modules, want 66", c.modules)
			}
			if c.scales != 0 || c.biases != 0 {
				t.Errorf("%d scales and %d biases differ from the fixture", c.scales, c.biases)
			}
			if c.offBounds != 0 {
				t.Errorf("%d levels differ from the fixture away from any rounding boundary", c.offBounds)
			}
			if c.boundary > c.levels/100000 {
				t.Errorf("%d levels differ on rounding boundaries: more than 1 in 100000", c.boundary)
			}
			for _, r := range []quant.Rounding{quant.MLX, quant.MLXMetal} {
				c := compare(t, hf, fx, r)
				t.Logf("%s rounding (for information): %d of %d levels differ (by at most %d; %d on a rounding boundary), %d scales and %d biases differ",
					r, c.levelDiffs, c.levels, c.worstLevel, c.boundary, c.scales, c.biases)
			}
		})
	}
}
