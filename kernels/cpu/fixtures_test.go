package cpu

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Dequantization checked against the fixtures (see testdata/README.md):
// tiny-moe-mixed holds MLX affine weights at every width and group size,
// quantized from the bf16 weights of tiny-moe. The loader package is not used
// here; the safetensors header is parsed directly.

type stEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

type stFile struct {
	raw     []byte
	base    int64 // start of the data section
	tensors map[string]stEntry
	buf     kernels.Buffer
}

func openST(t *testing.T, b *Backend, path string) *stFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(binary.LittleEndian.Uint64(raw))
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	f := &stFile{raw: raw, base: 8 + n, tensors: map[string]stEntry{}}
	for name, v := range hdr {
		if name == "__metadata__" {
			continue
		}
		var e stEntry
		if err := json.Unmarshal(v, &e); err != nil {
			t.Fatal(err)
		}
		f.tensors[name] = e
	}
	if f.buf, err = b.WrapHost(raw); err != nil {
		t.Fatal(err)
	}
	return f
}

// tensor returns the named tensor as a view into the wrapped file.
func (f *stFile) tensor(t *testing.T, name string) kernels.Tensor {
	t.Helper()
	e, ok := f.tensors[name]
	if !ok {
		t.Fatalf("tensor %s not in the file", name)
	}
	dt, err := dtype.Parse(e.DType)
	if err != nil {
		t.Fatal(err)
	}
	return kernels.Tensor{Buf: f.buf, Offset: f.base + e.Offsets[0], DType: dt, Shape: e.Shape}
}

func (f *stFile) bytes(t *testing.T, name string) []byte {
	e := f.tensors[name]
	return f.raw[f.base+e.Offsets[0] : f.base+e.Offsets[1]]
}

// quantConfig reads bits and group size per module from config.json.
func quantConfig(t *testing.T, path string) func(module string) (bits, group int) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Quantization map[string]json.RawMessage `json:"quantization"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	var defBits, defGroup int
	json.Unmarshal(cfg.Quantization["bits"], &defBits)
	json.Unmarshal(cfg.Quantization["group_size"], &defGroup)
	return func(module string) (int, int) {
		var o struct {
			Bits  int `json:"bits"`
			Group int `json:"group_size"`
		}
		if v, ok := cfg.Quantization[module]; ok {
			json.Unmarshal(v, &o)
			return o.Bits, o.Group
		}
		return defBits, defGroup
	}
}

// fixtureWeight is one quantized tensor of tiny-moe-mixed and the bf16 tensor
// it was made from.
type fixtureWeight struct {
	module      string
	q           *kernels.Weight // quantized (2D or 3D)
	d           *kernels.Weight // the bf16 original, same shape
	scales      []float64       // [E?, N, G]
	biases      []float64
	words       []uint32 // [E?, N, K·bits/32]
	experts     int
	bits, group int
}

func fixtureWeights(t *testing.T, b *Backend) []fixtureWeight {
	dir := filepath.Join("..", "..", "testdata")
	mixed := openST(t, b, filepath.Join(dir, "tiny-moe-mixed", "model.safetensors"))
	bf := openST(t, b, filepath.Join(dir, "tiny-moe", "model.safetensors"))
	qcfg := quantConfig(t, filepath.Join(dir, "tiny-moe-mixed", "config.json"))
	var names []string
	for name := range mixed.tensors {
		if strings.HasSuffix(name, ".scales") {
			names = append(names, strings.TrimSuffix(name, ".scales"))
		}
	}
	sort.Strings(names)
	var out []fixtureWeight
	for _, module := range names {
		bits, group := qcfg(module)
		rel := strings.TrimPrefix(module, "language_model.model.")
		// The bf16 original, and for experts the rows of the fused tensor.
		hfName, rowOff := "model.language_model."+rel+".weight", 0
		if i := strings.Index(rel, "experts.switch_glu."); i >= 0 {
			layer, proj := rel[:i], strings.TrimPrefix(rel[i:], "experts.switch_glu.")
			switch proj {
			case "gate_proj":
				hfName = "model.language_model." + layer + "experts.gate_up_proj"
			case "up_proj":
				hfName = "model.language_model." + layer + "experts.gate_up_proj"
				rowOff = -1 // second half, set below
			case "down_proj":
				hfName = "model.language_model." + layer + "experts.down_proj"
			default:
				t.Fatalf("unknown expert projection %s", module)
			}
		}
		d := bf.tensor(t, hfName)
		qd, qs, qb := mixed.tensor(t, module+".weight"), mixed.tensor(t, module+".scales"), mixed.tensor(t, module+".biases")
		nd := len(qd.Shape)
		n, k := qd.Shape[nd-2], d.Shape[len(d.Shape)-1]
		if got := qd.Shape[nd-1] * 32 / k; got != bits || k/qs.Shape[nd-1] != group {
			t.Fatalf("%s: shapes %v/%v say %d bits, group %d; config says %d bits, group %d", module, qd.Shape, qs.Shape, got, k/qs.Shape[nd-1], bits, group)
		}
		fw := fixtureWeight{module: module, bits: bits, group: group}
		fw.q = &kernels.Weight{Data: qd, Scales: qs, Biases: qb, Bits: bits, Group: group, N: n, K: k}
		fw.d = &kernels.Weight{Data: d, N: n, K: k}
		if nd == 3 {
			e := qd.Shape[0]
			fw.experts = e
			fw.q.Experts = e
			fw.q.Data.Shape, fw.q.Scales.Shape, fw.q.Biases.Shape = qd.Shape[1:], qs.Shape[1:], qs.Shape[1:]
			fw.q.DataStride = int64(qd.Shape[1] * qd.Shape[2] * 4)
			fw.q.GroupStride = int64(qs.Shape[1] * qs.Shape[2] * qs.DType.Size())
			rows := d.Shape[1] // 2I for gate_up, H for down
			if rowOff < 0 {
				rowOff = n
			}
			fw.d.Experts = e
			fw.d.Data.Offset += int64(rowOff * k * 2)
			fw.d.Data.Shape = []int{n, k}
			fw.d.DataStride = int64(rows * k * 2)
		} else if d.Shape[0] != n {
			t.Fatalf("%s: %v vs bf16 %s %v", module, qd.Shape, hfName, d.Shape)
		}
		fw.scales = decode(qs.DType, mixed.bytes(t, module+".scales"))
		fw.biases = decode(qb.DType, mixed.bytes(t, module+".biases"))
		wb := mixed.bytes(t, module+".weight")
		fw.words = make([]uint32, len(wb)/4)
		for i := range fw.words {
			fw.words[i] = binary.LittleEndian.Uint32(wb[4*i:])
		}
		out = append(out, fw)
	}
	return out
}

// experts returns the 2D weights of fw (the weight itself, or each expert).
func (fw *fixtureWeight) matrices(t *testing.T) (q, d []kernels.Weight) {
	if fw.experts == 0 {
		return []kernels.Weight{*fw.q}, []kernels.Weight{*fw.d}
	}
	for e := range fw.experts {
		qe, err := fw.q.Expert(e)
		if err != nil {
			t.Fatal(err)
		}
		de, err := fw.d.Expert(e)
		if err != nil {
			t.Fatal(err)
		}
		q, d = append(q, qe), append(d, de)
	}
	return q, d
}

// stepBound is how far a dequantized element s·q+b may lie from the bf16
// weight it was made from: one quantization step |s| (the fixtures README:
// half a step, up to a full step at the clipped edge), widened by the rounding
// of the stored scale and bias to bf16 (relative 2^-9 each, so q·|s|·2^-9 and
// |b|·2^-9; 2^-8 here for margin). The fixture reaches 1.12 steps at 6 bits,
// q = 63.
func stepBound(s, b, q float64) float64 {
	return math.Abs(s)*(1+q/256) + math.Abs(b)/256
}

// TestFixtureDequant checks, for every quantized tensor of tiny-moe-mixed:
//
//  1. unpacking is exact: the values read with unit scales and zero biases are
//     integers in [0, 2^bits) that repack to the file's words;
//  2. dequantization matches scale·q + bias computed here bit by bit;
//  3. each dequantized element is within stepBound of the bf16 original;
//  4. the quantized matmul (MatMul, or MatMulExperts over all experts) times a
//     probe p agrees with the bf16 matmul: since element i differs by at most
//     stepBound_i, |Δ(w·p)| ≤ Σ_i stepBound_i·|p_i| (plus f32 rounding, 1e-5
//     of Σ|w_i·p_i|).
func TestFixtureDequant(t *testing.T) {
	b := newBackend(t)
	fws := fixtureWeights(t, b)
	seenBits, seenGroups := map[int]bool{}, map[int]bool{}
	r := rand.New(rand.NewPCG(41, 42))
	for _, fw := range fws {
		t.Run(fmt.Sprintf("%s/q%d/g%d", fw.module, fw.bits, fw.group), func(t *testing.T) {
			seenBits[fw.bits], seenGroups[fw.group] = true, true
			n, k, g := fw.q.N, fw.q.K, fw.q.K/fw.group
			wpr := k * fw.bits / 32
			qs, ds := fw.matrices(t)
			ids := make([]float64, n)
			for i := range ids {
				ids[i] = float64(i)
			}
			idt := tensor(t, b, dtype.I32, ids, n)
			ones := make([]float64, n*g)
			for i := range ones {
				ones[i] = 1
			}
			unit := tensor(t, b, dtype.F32, ones, n, g)
			zero := tensor(t, b, dtype.F32, nil, n, g)
			for e := range qs {
				words := fw.words[e*n*wpr : (e+1)*n*wpr]
				sc, bi := fw.scales[e*n*g:(e+1)*n*g], fw.biases[e*n*g:(e+1)*n*g]
				// 1. Exact unpacking, through Embed with unit scales.
				raw := qs[e]
				raw.Scales, raw.Biases = unit, zero
				qt := tensor(t, b, dtype.F32, nil, n, k)
				if err := b.Embed(qt, &raw, idt, 1); err != nil {
					t.Fatal(err)
				}
				qv := fetch(t, b, qt)
				for row := range n {
					ints := make([]int, k)
					for i, v := range qv[row*k : (row+1)*k] {
						if v != math.Trunc(v) || v < 0 || v >= float64(int(1)<<fw.bits) {
							t.Fatalf("expert %d row %d: unpacked value %v is not a %d-bit integer", e, row, v, fw.bits)
						}
						ints[i] = int(v)
					}
					for i, w := range refPack(ints, fw.bits) {
						if w != words[row*wpr+i] {
							t.Fatalf("expert %d row %d: repacked word %d = %#08x, file has %#08x", e, row, i, w, words[row*wpr+i])
						}
					}
				}
				// 2. and 3. Dequantized values.
				wt := tensor(t, b, dtype.F32, nil, n, k)
				if err := b.Embed(wt, &qs[e], idt, 1); err != nil {
					t.Fatal(err)
				}
				dt := tensor(t, b, dtype.F32, nil, n, k)
				if err := b.Embed(dt, &ds[e], idt, 1); err != nil {
					t.Fatal(err)
				}
				wv, dv := fetch(t, b, wt), fetch(t, b, dt)
				for row := range n {
					for i := range k {
						s, bb := sc[row*g+i/fw.group], bi[row*g+i/fw.group]
						q := float64(refQ(words[row*wpr:(row+1)*wpr], fw.bits, i))
						want := s*q + bb
						got := wv[row*k+i]
						if math.Abs(got-want) > 1e-6*(math.Abs(s*q)+math.Abs(bb)) {
							t.Fatalf("expert %d [%d,%d]: dequantized %v, want %v·%v+%v = %v", e, row, i, got, s, q, bb, want)
						}
						if d := math.Abs(got - dv[row*k+i]); d > stepBound(s, bb, q) {
							t.Fatalf("expert %d [%d,%d]: dequantized %v is %v from the bf16 weight %v (bound %v, one step %v)",
								e, row, i, got, d, dv[row*k+i], stepBound(s, bb, q), math.Abs(s))
						}
					}
				}
			}
			// 4. Matmul with a probe vector, quantized vs bf16.
			p := rounded(dtype.F32, randNorm(r, k))
			pt := tensor(t, b, dtype.F32, p, 1, k)
			rows := max(fw.experts, 1) * n
			yq, yd := tensor(t, b, dtype.F32, nil, rows, n), tensor(t, b, dtype.F32, nil, rows, n)
			yq.Shape, yd.Shape = []int{1, rows}, []int{1, rows}
			if fw.experts == 0 {
				if err := b.MatMul(yq, pt, fw.q); err != nil {
					t.Fatal(err)
				}
				if err := b.MatMul(yd, pt, fw.d); err != nil {
					t.Fatal(err)
				}
			} else {
				all := make([]float64, fw.experts)
				for i := range all {
					all[i] = float64(i)
				}
				it := tensor(t, b, dtype.I32, all, 1, fw.experts)
				yq.Shape, yd.Shape = []int{1, fw.experts, n}, []int{1, fw.experts, n}
				if err := b.MatMulExperts(yq, pt, fw.q, it); err != nil {
					t.Fatal(err)
				}
				if err := b.MatMulExperts(yd, pt, fw.d, it); err != nil {
					t.Fatal(err)
				}
			}
			gq, gd := fetch(t, b, yq), fetch(t, b, yd)
			for row := range rows {
				e, nr := row/n, row%n
				words := fw.words[(e*n+nr)*wpr : (e*n+nr+1)*wpr]
				var bound, mag float64
				for i := range k {
					s, bb := fw.scales[row*g+i/fw.group], fw.biases[row*g+i/fw.group]
					q := float64(refQ(words, fw.bits, i))
					bound += stepBound(s, bb, q) * math.Abs(p[i])
					mag += (math.Abs(s*q) + math.Abs(bb)) * math.Abs(p[i])
				}
				if d := math.Abs(gq[row] - gd[row]); d > bound+1e-5*mag {
					t.Fatalf("output %d: quantized %v vs bf16 %v: |Δ| %v > bound %v", row, gq[row], gd[row], d, bound)
				}
			}
		})
	}
	for _, bits := range []int{2, 3, 4, 5, 6, 8} {
		if !seenBits[bits] {
			t.Errorf("no %d-bit tensor in the fixture", bits)
		}
	}
	for _, g := range []int{32, 64, 128} {
		if !seenGroups[g] {
			t.Errorf("no group-%d tensor in the fixture", g)
		}
	}
}

// TestFixtureLMHead recomputes the fixtures' logits from their reference
// final hidden states (after the final norm): logits = 30·tanh(h·Eᵀ/30) with
// the tied embedding E (bf16, or dequantized MLX affine), through MatMul and
// Softcap. The references are transformers' float32 results.
func TestFixtureLMHead(t *testing.T) {
	b := newBackend(t)
	for _, name := range []string{"tiny-moe", "tiny-moe-4bit", "tiny-moe-8bit", "tiny-moe-mixed"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("..", "..", "testdata", name)
			model := openST(t, b, filepath.Join(dir, "model.safetensors"))
			ref := openST(t, b, filepath.Join(dir, "reference.safetensors"))
			var w *kernels.Weight
			if e, ok := model.tensors["model.language_model.embed_tokens.weight"]; ok {
				w = &kernels.Weight{Data: model.tensor(t, "model.language_model.embed_tokens.weight"), N: e.Shape[0], K: e.Shape[1]}
			} else {
				bits, group := quantConfig(t, filepath.Join(dir, "config.json"))("language_model.model.embed_tokens")
				d := model.tensor(t, "language_model.model.embed_tokens.weight")
				w = &kernels.Weight{
					Data:   d,
					Scales: model.tensor(t, "language_model.model.embed_tokens.scales"),
					Biases: model.tensor(t, "language_model.model.embed_tokens.biases"),
					Bits:   bits, Group: group, N: d.Shape[0], K: d.Shape[1] * 32 / bits,
				}
			}
			hs := ref.tensor(t, "hidden_states") // [7, T, H]
			layers, tn, h := hs.Shape[0], hs.Shape[1], hs.Shape[2]
			last, err := hs.RowRange((layers-1)*tn, layers*tn)
			if err != nil {
				t.Fatal(err)
			}
			want := decode(dtype.F32, ref.bytes(t, "logits"))
			for _, m := range []int{tn, 1} { // the prefill path and the decode path
				x, err := last.RowRange(0, m)
				if err != nil {
					t.Fatal(err)
				}
				y := tensor(t, b, dtype.F32, nil, m, w.N)
				if err := b.MatMul(y, x, w); err != nil {
					t.Fatal(err)
				}
				if err := b.Softcap(y, y, 30); err != nil {
					t.Fatal(err)
				}
				got := fetch(t, b, y)
				var worst float64
				for i := range got {
					worst = max(worst, math.Abs(got[i]-want[i]))
				}
				t.Logf("M=%d: max |logits - reference| = %.3g (hidden %d)", m, worst, h)
				if worst > 1e-4 {
					t.Fatalf("M=%d: logits differ from the reference by %.3g", m, worst)
				}
			}
		})
	}
}
