package loader

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Summary describes a loaded model for people and scripts.
type Summary struct {
	Dir           string            `json:"dir"`
	Architecture  string            `json:"architecture"`
	Layout        string            `json:"layout"`
	Vocab         int               `json:"vocab_size"`
	Hidden        int               `json:"hidden_size"`
	Layers        int               `json:"layers"`
	LayersByType  map[string]int    `json:"layers_by_type"`
	Heads         int               `json:"heads"`
	SlidingWindow int               `json:"sliding_window"`
	Experts       int               `json:"experts"`
	TopK          int               `json:"experts_per_token"`
	ExpertWidth   int               `json:"expert_width"`
	MLPWidth      int               `json:"mlp_width"`
	Softcap       float64           `json:"final_logit_softcap"`
	Params        int64             `json:"parameters"`
	Quantization  map[string]string `json:"quantization"` // module kind -> "4-bit g64", "bf16", ...
	MappedBytes   int64             `json:"mapped_bytes"`
	Files         int               `json:"files"`
	EOSTokenIDs   []int             `json:"eos_token_ids"`
	HasTokenizer  bool              `json:"has_tokenizer"`
	ContextLength int               `json:"context_length"`
}

// Summarize returns the model summary that `generate -info` prints.
func (m *Model) Summarize() Summary {
	c := m.Config
	s := Summary{
		Dir: m.Dir, Architecture: "gemma4 (" + c.ModelType + ")", Layout: m.Weights.Layout,
		Vocab: c.VocabSize, Hidden: c.HiddenSize, Layers: c.NumLayers, LayersByType: map[string]int{},
		Heads: c.NumHeads, SlidingWindow: c.SlidingWindow, MLPWidth: c.IntermediateSize, Softcap: c.FinalLogitSoftcap,
		MappedBytes: m.MappedBytes(), Files: len(m.Files), EOSTokenIDs: m.Generation.EOSTokenIDs,
		HasTokenizer: m.TokenizerPath != "", ContextLength: c.MaxPositionEmbeddings, Quantization: map[string]string{},
	}
	if c.EnableMoE {
		s.Experts, s.TopK, s.ExpertWidth = c.NumExperts, c.TopKExperts, c.MoEIntermediateSize
	}
	for _, l := range c.Layers {
		s.LayersByType[l.Type.String()]++
	}
	kinds := map[string]map[string]bool{}
	note := func(kind string, w *Weight) {
		if w == nil {
			return
		}
		d := w.Data.DType.String()
		if w.Quantized() {
			d = fmt.Sprintf("%d-bit g%d", w.Bits, w.Group)
		}
		if kinds[kind] == nil {
			kinds[kind] = map[string]bool{}
		}
		kinds[kind][d] = true
		n := int64(w.N) * int64(w.K)
		if w.Experts > 0 {
			n *= int64(w.Experts)
		}
		s.Params += n
	}
	note("embed", m.Weights.Embed)
	note("lm_head", m.Weights.LMHead)
	for i := range m.Weights.Layers {
		l := &m.Weights.Layers[i]
		for _, a := range []*Weight{l.Q, l.K, l.V, l.O} {
			note("attention", a)
		}
		for _, a := range []*Weight{l.Gate, l.Up, l.Down} {
			note("mlp", a)
		}
		note("router", l.Router)
		for _, a := range []*Weight{l.ExpGate, l.ExpUp, l.ExpDown} {
			note("experts", a)
		}
	}
	for k, set := range kinds {
		var vs []string
		for v := range set {
			vs = append(vs, v)
		}
		sort.Strings(vs)
		s.Quantization[k] = strings.Join(vs, ", ")
	}
	return s
}

// Print writes the summary as aligned text.
func (s Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "model         %s\n", s.Dir)
	fmt.Fprintf(w, "architecture  %s, %s tensor names\n", s.Architecture, s.Layout)
	fmt.Fprintf(w, "layers        %d (%d sliding, window %d; %d full)\n", s.Layers,
		s.LayersByType["sliding_attention"], s.SlidingWindow, s.LayersByType["full_attention"])
	fmt.Fprintf(w, "hidden        %d, %d heads, vocab %d, context %d\n", s.Hidden, s.Heads, s.Vocab, s.ContextLength)
	if s.Experts > 0 {
		fmt.Fprintf(w, "experts       %d, top-%d, width %d; dense MLP width %d\n", s.Experts, s.TopK, s.ExpertWidth, s.MLPWidth)
	} else {
		fmt.Fprintf(w, "mlp           dense, width %d\n", s.MLPWidth)
	}
	fmt.Fprintf(w, "parameters    %.2fM\n", float64(s.Params)/1e6)
	var kinds []string
	for k := range s.Quantization {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-11s %s\n", k, s.Quantization[k])
	}
	fmt.Fprintf(w, "mapped        %.1f MiB in %d file(s)\n", float64(s.MappedBytes)/(1<<20), s.Files)
	fmt.Fprintf(w, "eos ids       %v\n", s.EOSTokenIDs)
	if s.Softcap > 0 {
		fmt.Fprintf(w, "softcap       %g\n", s.Softcap)
	}
}
