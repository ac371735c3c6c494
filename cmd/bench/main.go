// Command bench measures prompt processing and decode throughput, like
// llama-bench: on a random-weight model with real shapes (-synthetic, no
// download) or on a model directory (-model).
//
//	go run ./cmd/bench -synthetic gemma-4-26b-a4b -layers 4 -bits 4 -prompt 512 -gen 128 -reps 3
//
// Decode at batch 1 is bound by memory bandwidth, so besides tokens/s it
// reports the weight bytes one decode step reads and the fraction of the
// machine's memory bandwidth that reaches (measured in the same run for the
// CPU; the device's DRAM peak for GPUs).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/gemmoe/gemmoe/backend"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/synth"
)

// memAvailable reports the memory a synthetic model may use (a variable so
// tests can shrink it).
var memAvailable = availableMemory

type options struct {
	synthetic, modelDir, backend string
	layers, bits, group          int
	prompt, gen, reps            int
	jsonOut                      bool
	seed                         uint64
	cpuProfile                   string
	sample                       string // "": tg reads every logit; else Generate with these settings
	allLogits                    bool
}

// samplings are the -sample settings: Generate's sampler in the tg test.
var samplings = map[string]model.SampleOptions{
	"greedy": {},
	"gemma":  {Temperature: 1, TopK: 64, TopP: 0.95, Seed: 1}, // Gemma's generation_config.json
}

// Result is one row of the report.
type Result struct {
	Backend      string  `json:"backend"`
	Device       string  `json:"device,omitempty"`
	Model        string  `json:"model"`
	SizeBytes    int64   `json:"size_bytes"`
	Params       int64   `json:"params"`
	Layers       int     `json:"layers"`
	Test         string  `json:"test"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	StdDev       float64 `json:"stddev"`
	// Decode rows only.
	BytesPerToken  int64   `json:"bytes_per_token,omitempty"`
	Bandwidth      float64 `json:"bandwidth_bytes_per_sec,omitempty"`
	BandwidthKind  string  `json:"bandwidth_kind,omitempty"`
	BandwidthFrac  float64 `json:"bandwidth_frac,omitempty"`
	MsPerLayer     float64 `json:"ms_per_layer,omitempty"`
	HeadMs         float64 `json:"lm_head_ms,omitempty"`
	FullModelTPS   float64 `json:"full_model_tokens_per_sec,omitempty"`
	FullModelLayer int     `json:"full_model_layers,omitempty"`
}

func main() {
	var o options
	flag.StringVar(&o.synthetic, "synthetic", "", "random-weight model with real shapes: "+strings.Join(archNames(), ", "))
	flag.StringVar(&o.modelDir, "model", "", "model directory to benchmark instead")
	flag.StringVar(&o.backend, "backend", "auto", "backend: "+strings.Join(backend.Names(), ", "))
	flag.IntVar(&o.layers, "layers", 0, "layers of the synthetic model (0: all); fewer fit small machines")
	flag.IntVar(&o.bits, "bits", 4, "synthetic weights: MLX affine bits (2,3,4,5,6,8) or 0 for bf16")
	flag.IntVar(&o.group, "group", 64, "synthetic weights: quantization group")
	flag.IntVar(&o.prompt, "prompt", 512, "prompt tokens (pp test; 0 skips)")
	flag.IntVar(&o.gen, "gen", 128, "generated tokens (tg test; 0 skips)")
	flag.IntVar(&o.reps, "reps", 3, "repetitions of each test")
	flag.BoolVar(&o.jsonOut, "json", false, "print results as JSON lines")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the synthetic weights and tokens")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed tests to this file")
	flag.StringVar(&o.sample, "sample", "", "tg test through Generate with this sampler (greedy, gemma: temperature 1, top-k 64, top-p 0.95) instead of reading every token's logits")
	flag.BoolVar(&o.allLogits, "all-logits", false, "with -sample: read all logits each token even where the backend picks the best ones itself")
	flag.Parse()
	if err := run(context.Background(), o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func archNames() []string {
	var n []string
	for k := range synth.Archs {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func run(ctx context.Context, o options, out, log io.Writer) error {
	if (o.synthetic == "") == (o.modelDir == "") {
		return errors.New("give exactly one of -synthetic NAME or -model DIR")
	}
	if o.reps <= 0 || o.prompt < 0 || o.gen < 0 || (o.prompt == 0 && o.gen == 0) {
		return errors.New("-reps must be positive, and -prompt or -gen too")
	}
	sampling, ok := samplings[o.sample]
	if o.sample != "" && !ok {
		return fmt.Errorf("-sample %q: want greedy or gemma", o.sample)
	}
	src, name, err := open(o, log)
	if err != nil {
		return err
	}
	defer src.Close()
	b, note, err := backend.Open(o.backend)
	if err != nil {
		return err
	}
	defer b.Close()
	if note != "" {
		fmt.Fprintln(log, "backend auto:", note)
	}
	device := ""
	if d, ok := b.(interface{ Device() string }); ok {
		device = d.Device()
		fmt.Fprintln(log, "device:", device)
	}
	chunk := min(max(o.prompt, 1), 512)
	m, err := model.New(src, b, model.Options{Chunk: chunk, ContextLength: o.prompt + o.gen + 1, ReadAllLogits: o.allLogits})
	if err != nil {
		return err
	}
	defer m.Close()
	sum := src.Summarize()
	base := Result{Backend: b.Name(), Device: device, Model: name, SizeBytes: sum.MappedBytes, Params: sum.Params, Layers: src.Config.NumLayers}
	rng := rand.New(rand.NewPCG(o.seed, 2))
	tokens := func(n int) []int32 {
		t := make([]int32, n)
		for i := range t {
			t[i] = int32(3 + rng.IntN(src.Config.VocabSize-3))
		}
		return t
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var results []Result
	if o.prompt > 0 {
		var rates []float64
		for range o.reps + 1 { // the first run warms up
			s, err := m.NewSession()
			if err != nil {
				return err
			}
			t0 := time.Now()
			_, err = s.Forward(ctx, tokens(o.prompt))
			el := time.Since(t0)
			s.Close()
			if err != nil {
				return err
			}
			rates = append(rates, float64(o.prompt)/el.Seconds())
		}
		r := base
		r.Test = fmt.Sprintf("pp%d", o.prompt)
		r.TokensPerSec, r.StdDev = meanStd(rates[1:])
		results = append(results, r)
	}
	if o.gen > 0 {
		var rates []float64
		for range o.reps {
			s, err := m.NewSession()
			if err != nil {
				return err
			}
			if o.sample != "" {
				// The first token comes with the prompt: the rate is of the
				// others (Stats.GenTPS). Random weights may reach an end id
				// early; the rate is of the tokens generated.
				var st model.Stats
				opts := model.GenerateOptions{SampleOptions: sampling, MaxTokens: o.gen + 1}
				for _, err := range s.Generate(ctx, tokens(1), opts, &st) {
					if err != nil {
						s.Close()
						return err
					}
				}
				rates = append(rates, st.GenTPS())
				s.Close()
				continue
			}
			if _, err := s.Forward(ctx, tokens(1)); err != nil {
				return err
			}
			next := tokens(o.gen)
			var logits []float32
			t0 := time.Now()
			for i := 0; i < o.gen; i++ {
				// Each token's logits reach the host, as a decode loop needs
				// them for sampling (into one buffer: no allocation).
				if logits, err = s.ForwardInto(ctx, next[i:i+1], logits); err != nil {
					s.Close()
					return err
				}
			}
			rates = append(rates, float64(o.gen)/time.Since(t0).Seconds())
			s.Close()
		}
		r := base
		r.Test = fmt.Sprintf("tg%d", o.gen)
		if o.sample != "" {
			r.Test += " " + o.sample
		}
		r.TokensPerSec, r.StdDev = meanStd(rates)
		r.BytesPerToken = decodeBytes(src)
		r.Bandwidth, r.BandwidthKind = bandwidth(b)
		if r.Bandwidth > 0 {
			r.BandwidthFrac = r.TokensPerSec * float64(r.BytesPerToken) / r.Bandwidth
		}
		head, err := m.TimeHead(5) // the LM head alone, to split decode time
		if err != nil {
			return err
		}
		r.HeadMs = head * 1e3
		perToken := 1 / r.TokensPerSec
		r.MsPerLayer = max(perToken-head, 0) / float64(r.Layers) * 1e3
		if o.synthetic != "" {
			full := synth.Archs[o.synthetic].Layers
			r.FullModelLayer = full
			r.FullModelTPS = 1 / (head + float64(full)*r.MsPerLayer/1e3)
		}
		results = append(results, r)
	}
	report(out, results, o.jsonOut)
	return nil
}

// open builds the synthetic model (after checking it fits in memory) or
// opens the model directory.
func open(o options, log io.Writer) (*loader.Model, string, error) {
	if o.modelDir != "" {
		src, err := loader.Open(o.modelDir)
		return src, o.modelDir, err
	}
	arch, ok := synth.Archs[o.synthetic]
	if !ok {
		return nil, "", fmt.Errorf("unknown synthetic model %q (have %s)", o.synthetic, strings.Join(archNames(), ", "))
	}
	spec := synth.Spec{Layers: o.layers, Bits: o.bits, Group: o.group, Seed: o.seed}
	size, err := synth.Size(arch, spec)
	if err != nil {
		return nil, "", err
	}
	layers := o.layers
	if layers == 0 {
		layers = arch.Layers
	}
	// Weights plus a margin for caches and activations.
	need := size + size/20 + 1<<30
	if avail, ok := memAvailable(); ok && need > avail {
		perLayer := size / int64(layers)
		fit := int((avail - 1<<30 - size/20) / max(perLayer, 1))
		return nil, "", fmt.Errorf("the synthetic %s with %d layers needs about %.1f GiB but %.1f GiB is available; try -layers %d",
			o.synthetic, layers, float64(need)/(1<<30), float64(avail)/(1<<30), max(fit-1, 1))
	}
	fmt.Fprintf(log, "building synthetic %s: %d of %d layers, %s, %.2f GiB...\n", o.synthetic, layers, arch.Layers,
		quantName(o.bits, o.group), float64(size)/(1<<30))
	cfg, img, err := synth.Build(arch, spec, modelAlloc)
	if err != nil {
		return nil, "", err
	}
	src, err := loader.OpenBytes(cfg, img)
	name := fmt.Sprintf("%s %s (%d/%d layers)", o.synthetic, quantName(o.bits, o.group), layers, arch.Layers)
	return src, name, err
}

func quantName(bits, group int) string {
	if bits == 0 {
		return "bf16"
	}
	return fmt.Sprintf("%d-bit g%d", bits, group)
}

// weightBytes is the bytes of a weight (all experts for a 3D weight).
func weightBytes(w *loader.Weight) int64 {
	if w == nil {
		return 0
	}
	n := int64(len(w.Data.Data))
	if w.Quantized() {
		n += int64(len(w.Scales.Data) + len(w.Biases.Data))
	}
	return n
}

// decodeBytes is the weight bytes one decode step reads: every dense weight,
// top-k of the experts, the LM head and one embedding row.
func decodeBytes(src *loader.Model) int64 {
	w, c := src.Weights, src.Config
	var n int64
	head := weightBytes(w.Embed)
	if w.LMHead != nil {
		n += weightBytes(w.LMHead)
	} else {
		n += head
	}
	n += head / int64(c.VocabSize)
	for i := range w.Layers {
		l := &w.Layers[i]
		for _, x := range []*loader.Weight{l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down, l.Router} {
			n += weightBytes(x)
		}
		if c.EnableMoE {
			for _, x := range []*loader.Weight{l.ExpGate, l.ExpUp, l.ExpDown} {
				n += weightBytes(x) / int64(c.NumExperts) * int64(c.TopKExperts)
			}
		}
	}
	return n
}

// bandwidth returns the memory bandwidth decode is compared with: a GPU
// backend's DRAM peak, or the host's read bandwidth measured now.
func bandwidth(b kernels.Backend) (float64, string) {
	if p, ok := b.(interface{ PeakBandwidth() float64 }); ok {
		return p.PeakBandwidth(), "device DRAM peak"
	}
	return cpu.MeasureReadBandwidth(), "measured host read"
}

func meanStd(v []float64) (float64, float64) {
	var s float64
	for _, x := range v {
		s += x
	}
	mean := s / float64(len(v))
	var d float64
	for _, x := range v {
		d += (x - mean) * (x - mean)
	}
	if len(v) > 1 {
		d /= float64(len(v) - 1)
	}
	return mean, math.Sqrt(d)
}

func report(w io.Writer, rs []Result, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, r := range rs {
			enc.Encode(r)
		}
		return
	}
	tw := 6 // the test column: as wide as its longest name
	for _, r := range rs {
		tw = max(tw, len(r.Test))
	}
	fmt.Fprintf(w, "| %-40s | %9s | %7s | %-7s | %*s | %18s |\n", "model", "size", "params", "backend", tw, "test", "t/s")
	fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", strings.Repeat("-", 40), strings.Repeat("-", 9),
		strings.Repeat("-", 7), strings.Repeat("-", 7), strings.Repeat("-", tw), strings.Repeat("-", 18))
	for _, r := range rs {
		fmt.Fprintf(w, "| %-40s | %5.2f GiB | %6.2fB | %-7s | %*s | %9.2f ± %6.2f |\n", r.Model,
			float64(r.SizeBytes)/(1<<30), float64(r.Params)/1e9, r.Backend, tw, r.Test, r.TokensPerSec, r.StdDev)
	}
	for _, r := range rs {
		if r.BytesPerToken == 0 {
			continue
		}
		fmt.Fprintf(w, "\ndecode reads %.1f MiB of weights per token; %.2f t/s × that = %.2f GB/s = %.2f of the %s bandwidth (%.2f GB/s)\n",
			float64(r.BytesPerToken)/(1<<20), r.TokensPerSec, r.TokensPerSec*float64(r.BytesPerToken)/1e9,
			r.BandwidthFrac, r.BandwidthKind, r.Bandwidth/1e9)
		fmt.Fprintf(w, "per layer %.2f ms/token, LM head %.2f ms/token", r.MsPerLayer, r.HeadMs)
		if r.FullModelLayer > 0 && r.FullModelLayer != r.Layers {
			fmt.Fprintf(w, "; all %d layers would decode at about %.2f t/s", r.FullModelLayer, r.FullModelTPS)
		}
		fmt.Fprintln(w)
	}
}
