package main

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/quant"
)

// Recipes: which modules get which quantization before -override.
const (
	// recipeGemma4 is mlx-lm's for Gemma 4 (the quant_predicate of
	// mlx_lm/models/gemma4_text.py): router.proj at 8 bits in groups of 64,
	// every other linear and embedding at the defaults. The per-layer model
	// projection of PLE models (a plain weight in mlx-lm, not an nn.Linear)
	// stays dense.
	recipeGemma4 = "gemma4"
	// recipeUniform quantizes every matrix at the defaults.
	recipeUniform = "uniform"
)

// override is one -override flag: modules whose path matches re get bits and
// group, or stay dense.
type override struct {
	text        string
	re          *regexp.Regexp
	dense       bool
	bits, group int
	used        bool
}

// parseOverride reads 'REGEX=BITS:GROUP', 'REGEX=BITS' (the default group)
// or 'REGEX=dense'. The regex is matched anywhere in the MLX module path
// (anchor it with ^...$ for one module).
func parseOverride(s string, defGroup int) (*override, error) {
	i := strings.LastIndex(s, "=")
	if i <= 0 {
		return nil, fmt.Errorf("-override %q: want 'REGEX=BITS:GROUP', 'REGEX=BITS' or 'REGEX=dense'", s)
	}
	o := &override{text: s, group: defGroup}
	var err error
	if o.re, err = regexp.Compile(s[:i]); err != nil {
		return nil, fmt.Errorf("-override %q: %w", s, err)
	}
	val := s[i+1:]
	if val == "dense" {
		o.dense = true
		return o, nil
	}
	b, g, hasGroup := strings.Cut(val, ":")
	if o.bits, err = strconv.Atoi(b); err != nil {
		return nil, fmt.Errorf("-override %q: bits %q is not a number", s, b)
	}
	if hasGroup {
		if o.group, err = strconv.Atoi(g); err != nil {
			return nil, fmt.Errorf("-override %q: group size %q is not a number", s, g)
		}
	}
	if err := (quant.Params{Bits: o.bits, Group: o.group}).Check(); err != nil {
		return nil, fmt.Errorf("-override %q: %w", s, err)
	}
	return o, nil
}

// rowSource is a [rows, cols] view of a source tensor: its own rows, or the
// gate (part 0) or up (part 1) half of each expert of a fused
// experts.gate_up_proj [E, 2·split, cols].
type rowSource struct {
	t          *loader.Tensor
	file       []byte // the mapping t lies in (t.Offset is relative to it)
	rows, cols int
	split      int // 0: the tensor's rows in order
	part       int
}

// start returns the element index in t where row r of the view begins.
func (s rowSource) start(r int) int {
	if s.split == 0 {
		return r * s.cols
	}
	e, i := r/s.split, r%s.split
	return ((2*e+s.part)*s.split + i) * s.cols
}

// item is one output weight (or other tensor) and how to make it.
type item struct {
	name   string // output name of the data tensor
	module string // name without ".weight": the quantization config key
	shape  []int  // logical shape [..., out, in]
	src    rowSource
	q      *quant.Params // nil: written dense
	note   string        // why a matrix stays dense
}

// outputs lists the tensors an item writes: data, then scales and biases.
func (it *item) outputs(dt dtype.DType) []*outTensor {
	if it.q == nil {
		odt := dt
		if !it.src.t.DType.IsFloat() {
			odt = it.src.t.DType // not a float: copied as is
		}
		return []*outTensor{{name: it.name, dt: odt, shape: it.shape, item: it, part: partData}}
	}
	lead := it.shape[:len(it.shape)-1]
	cols := it.shape[len(it.shape)-1]
	packed := append(append([]int(nil), lead...), quant.PackedWords(cols, it.q.Bits))
	groups := append(append([]int(nil), lead...), cols/it.q.Group)
	return []*outTensor{
		{name: it.name, dt: dtype.U32, shape: packed, item: it, part: partData},
		{name: it.module + ".scales", dt: dt, shape: groups, item: it, part: partScales},
		{name: it.module + ".biases", dt: dt, shape: groups, item: it, part: partBiases},
	}
}

// plan is the whole conversion: what to write and what was left out.
type plan struct {
	items   []*item
	dropped []string // input tensors not written, with the reason
	dense   []string // matrices kept dense, with the reason
}

// makePlan maps the checkpoint's tensors to MLX names, splits the fused
// experts and decides each matrix's quantization.
func makePlan(m *loader.Model, o *options) (*plan, error) {
	p := &plan{}
	names := make([]string, 0, len(m.Tensors))
	for n := range m.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	layout := m.Weights.Layout
	for _, n := range names {
		t := m.Tensors[n]
		out, why := mlxName(layout, n, m.Config.TieWordEmbeddings)
		if out == "" {
			p.dropped = append(p.dropped, n+" ("+why+")")
			continue
		}
		switch {
		case strings.HasSuffix(out, ".experts.gate_up_proj"):
			if len(t.Shape) != 3 || t.Shape[1]%2 != 0 {
				return nil, fmt.Errorf("tensor %q has shape %v (want [experts, 2·width, hidden])", n, t.Shape)
			}
			E, I, H := t.Shape[0], t.Shape[1]/2, t.Shape[2]
			base := strings.TrimSuffix(out, "gate_up_proj") + "switch_glu."
			for part, proj := range []string{"gate_proj", "up_proj"} {
				p.items = append(p.items, &item{name: base + proj + ".weight", module: base + proj, shape: []int{E, I, H},
					src: rowSource{t: t, file: m.Files[t.File].Data, rows: E * I, cols: H, split: I, part: part}})
			}
		case strings.HasSuffix(out, ".experts.down_proj"):
			out = strings.TrimSuffix(out, "down_proj") + "switch_glu.down_proj.weight"
			fallthrough
		default:
			it := &item{name: out, module: strings.TrimSuffix(out, ".weight"), shape: t.Shape}
			cols := 1
			if len(t.Shape) > 0 {
				cols = t.Shape[len(t.Shape)-1]
			}
			it.src = rowSource{t: t, file: m.Files[t.File].Data, rows: t.Numel() / max(cols, 1), cols: cols}
			p.items = append(p.items, it)
		}
	}
	for _, it := range p.items {
		if err := o.decide(it); err != nil {
			return nil, err
		}
		if it.note != "" {
			p.dense = append(p.dense, it.module+" ("+it.note+")")
		}
	}
	for _, ov := range o.overrides {
		if !ov.used {
			return nil, fmt.Errorf("-override %q matches no quantizable module (module paths look like %q)", ov.text, examplePath(p))
		}
	}
	sort.Slice(p.items, func(i, j int) bool { return p.items[i].name < p.items[j].name })
	return p, nil
}

func examplePath(p *plan) string {
	for _, it := range p.items {
		if strings.Contains(it.module, "self_attn.q_proj") {
			return it.module
		}
	}
	return "language_model.model.layers.0.self_attn.q_proj"
}

// mlxName returns the output name of input tensor n, or "" and why it is
// left out. Hugging Face multimodal names (model.language_model.*) become
// MLX's (language_model.model.*); text-only (model.*) and MLX names stay;
// vision and audio towers, rotary buffers and a tied lm_head are dropped.
func mlxName(layout, n string, tied bool) (string, string) {
	if strings.Contains(n, "rotary_emb") {
		return "", "rotary buffer"
	}
	if n == "lm_head.weight" || n == "language_model.lm_head.weight" {
		if tied {
			return "", "tied to the embedding"
		}
		if layout == "hf-text" {
			return n, ""
		}
		return "language_model.lm_head.weight", ""
	}
	switch layout {
	case "hf":
		if rest, ok := strings.CutPrefix(n, "model.language_model."); ok {
			return "language_model.model." + rest, ""
		}
	case "mlx":
		if strings.HasPrefix(n, "language_model.model.") {
			return n, ""
		}
	case "hf-text":
		if strings.HasPrefix(n, "model.") {
			return n, ""
		}
	}
	return "", "not part of the text model"
}

// decide sets it.q: the recipe, then the overrides (the last match wins),
// then the width check.
func (o *options) decide(it *item) error {
	t := it.src.t
	if !strings.HasSuffix(it.name, ".weight") || len(it.shape) < 2 {
		return nil // norms, scalars, per-expert scales: dense
	}
	if !t.DType.IsFloat() {
		return fmt.Errorf("tensor %q has dtype %s: the input must be a dense float checkpoint", t.Name, t.DType)
	}
	q := &quant.Params{Bits: o.bits, Group: o.group, Type: o.dtype, Rounding: o.rounding}
	switch o.recipe {
	case recipeGemma4:
		switch {
		case strings.HasSuffix(it.module, "router.proj"):
			q.Bits, q.Group = 8, 64
		case strings.HasSuffix(it.module, "per_layer_model_projection"):
			q = nil
		}
	case recipeUniform:
	default:
		return fmt.Errorf("unknown recipe %q (want %s or %s)", o.recipe, recipeGemma4, recipeUniform)
	}
	for _, ov := range o.overrides {
		if !ov.re.MatchString(it.module) {
			continue
		}
		ov.used = true
		if ov.dense {
			q = nil
			continue
		}
		q = &quant.Params{Bits: ov.bits, Group: ov.group, Type: o.dtype, Rounding: o.rounding}
	}
	if q == nil {
		return nil
	}
	if cols := it.shape[len(it.shape)-1]; cols%q.Group != 0 {
		it.note = fmt.Sprintf("input width %d is not a multiple of the group size %d", cols, q.Group)
		return nil
	}
	it.q = q
	return nil
}
