// Package synth builds random-weight Gemma 4 checkpoints in memory with real
// model shapes (Gemma 4 26B-A4B by default), quantized the MLX way or dense
// bf16, for throughput benchmarks that need no download. The values are
// random but well scaled (unit-variance activations), so a forward pass
// stays finite and the router spreads tokens over the experts.
package synth

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"

	"github.com/gemmoe/gemmoe/dtype"
)

// Arch is the shape of a Gemma 4 text model.
type Arch struct {
	Name                           string
	Vocab, Hidden, Layers, Heads   int
	SlidingKVHeads, SlidingHeadDim int
	FullKVHeads, FullHeadDim       int
	Window                         int
	Experts, TopK, ExpertWidth     int
	MLPWidth                       int
	Softcap                        float64
	Context                        int
}

// Archs are the synthetic models cmd/bench knows, by name.
var Archs = map[string]Arch{
	"gemma-4-26b-a4b": {
		Name: "gemma-4-26b-a4b", Vocab: 262144, Hidden: 2816, Layers: 30, Heads: 16,
		SlidingKVHeads: 8, SlidingHeadDim: 256, FullKVHeads: 2, FullHeadDim: 512, Window: 1024,
		Experts: 128, TopK: 8, ExpertWidth: 704, MLPWidth: 2112, Softcap: 30, Context: 262144,
	},
}

// Spec chooses the size and format of a synthetic checkpoint.
type Spec struct {
	Layers int    // layers to build (≤ Arch.Layers; 0: all)
	Bits   int    // 2..8 for MLX affine; 0 for dense bf16
	Group  int    // quantization group (default 64)
	Seed   uint64 // random seed
}

type tensor struct {
	name  string
	dt    dtype.DType
	shape []int
	fill  fillKind
	amp   float32 // weights lie in [-amp, amp]
	bits  int
}

type fillKind int

const (
	fillOnes   fillKind = iota // norms and scales
	fillRandom                 // dense bf16 weights or packed words
	fillScale                  // quantization scales for amp/bits
	fillBias                   // quantization biases (-amp)
)

func (t *tensor) bytes() int64 {
	n := int64(t.dt.Size())
	for _, d := range t.shape {
		n *= int64(d)
	}
	return n
}

func (a Arch) layerFull(i, layers int) bool { return (i+1)%6 == 0 || i == layers-1 }

// tensors lists the checkpoint's tensors under MLX names.
func (a Arch) tensors(s Spec) []tensor {
	var ts []tensor
	lin := func(path string, lead []int, n, k int, bits int) {
		amp := float32(math.Sqrt(3 / float64(k)))
		shape := append(append([]int(nil), lead...), n, k)
		if s.Bits == 0 {
			ts = append(ts, tensor{name: path + ".weight", dt: dtype.BF16, shape: shape, fill: fillRandom, amp: amp})
			return
		}
		packed := append(append([]int(nil), lead...), n, k*bits/32)
		groups := append(append([]int(nil), lead...), n, k/s.Group)
		ts = append(ts,
			tensor{name: path + ".weight", dt: dtype.U32, shape: packed, fill: fillRandom},
			tensor{name: path + ".scales", dt: dtype.BF16, shape: groups, fill: fillScale, amp: amp, bits: bits},
			tensor{name: path + ".biases", dt: dtype.BF16, shape: groups, fill: fillBias, amp: amp, bits: bits})
	}
	vec := func(name string, n int) {
		ts = append(ts, tensor{name: name, dt: dtype.BF16, shape: []int{n}, fill: fillOnes})
	}
	p := "language_model.model."
	h := a.Hidden
	lin(p+"embed_tokens", nil, a.Vocab, h, s.Bits)
	vec(p+"norm.weight", h)
	for i := 0; i < s.Layers; i++ {
		lp := fmt.Sprintf("%slayers.%d.", p, i)
		hd, kvh := a.SlidingHeadDim, a.SlidingKVHeads
		full := a.layerFull(i, s.Layers)
		if full {
			hd, kvh = a.FullHeadDim, a.FullKVHeads
		}
		for _, n := range []string{"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
			"post_feedforward_layernorm", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"} {
			vec(lp+n+".weight", h)
		}
		vec(lp+"self_attn.q_norm.weight", hd)
		vec(lp+"self_attn.k_norm.weight", hd)
		lin(lp+"self_attn.q_proj", nil, a.Heads*hd, h, s.Bits)
		lin(lp+"self_attn.k_proj", nil, kvh*hd, h, s.Bits)
		if !full {
			lin(lp+"self_attn.v_proj", nil, kvh*hd, h, s.Bits)
		}
		lin(lp+"self_attn.o_proj", nil, h, a.Heads*hd, s.Bits)
		lin(lp+"mlp.gate_proj", nil, a.MLPWidth, h, s.Bits)
		lin(lp+"mlp.up_proj", nil, a.MLPWidth, h, s.Bits)
		lin(lp+"mlp.down_proj", nil, h, a.MLPWidth, s.Bits)
		routerBits := s.Bits
		if s.Bits != 0 {
			routerBits = 8
		}
		lin(lp+"router.proj", nil, a.Experts, h, routerBits)
		vec(lp+"router.scale", h)
		vec(lp+"router.per_expert_scale", a.Experts)
		vec(lp+"layer_scalar", 1)
		e := []int{a.Experts}
		lin(lp+"experts.switch_glu.gate_proj", e, a.ExpertWidth, h, s.Bits)
		lin(lp+"experts.switch_glu.up_proj", e, a.ExpertWidth, h, s.Bits)
		lin(lp+"experts.switch_glu.down_proj", e, h, a.ExpertWidth, s.Bits)
	}
	return ts
}

func (s *Spec) normalize(a Arch) error {
	if s.Layers <= 0 {
		s.Layers = a.Layers
	}
	if s.Layers > a.Layers {
		return fmt.Errorf("synth: %s has %d layers, asked for %d", a.Name, a.Layers, s.Layers)
	}
	if s.Group == 0 {
		s.Group = 64
	}
	switch s.Bits {
	case 0, 2, 3, 4, 5, 6, 8:
	default:
		return fmt.Errorf("synth: %d bits is not an MLX affine width (2, 3, 4, 5, 6, 8; 0 for bf16)", s.Bits)
	}
	for _, k := range []int{a.Hidden, a.ExpertWidth, a.MLPWidth, a.Heads * a.SlidingHeadDim, a.Heads * a.FullHeadDim} {
		if s.Bits != 0 && k%s.Group != 0 {
			return fmt.Errorf("synth: group %d does not divide width %d of %s", s.Group, k, a.Name)
		}
	}
	return nil
}

// Size returns the bytes of the checkpoint Build would make.
func Size(a Arch, s Spec) (int64, error) {
	if err := s.normalize(a); err != nil {
		return 0, err
	}
	var n int64
	for _, t := range a.tensors(s) {
		n += t.bytes()
	}
	return n, nil
}

// Config returns the config.json of the synthetic model.
func Config(a Arch, s Spec) ([]byte, error) {
	if err := s.normalize(a); err != nil {
		return nil, err
	}
	types := make([]string, s.Layers)
	for i := range types {
		types[i] = "sliding_attention"
		if a.layerFull(i, s.Layers) {
			types[i] = "full_attention"
		}
	}
	text := map[string]any{
		"model_type": "gemma4_text", "vocab_size": a.Vocab, "hidden_size": a.Hidden, "num_hidden_layers": s.Layers,
		"num_attention_heads": a.Heads, "num_key_value_heads": a.SlidingKVHeads, "head_dim": a.SlidingHeadDim,
		"global_head_dim": a.FullHeadDim, "num_global_key_value_heads": a.FullKVHeads, "attention_k_eq_v": true,
		"sliding_window": a.Window, "layer_types": types, "intermediate_size": a.MLPWidth, "enable_moe_block": true,
		"num_experts": a.Experts, "top_k_experts": a.TopK, "moe_intermediate_size": a.ExpertWidth,
		"rms_norm_eps": 1e-6, "final_logit_softcapping": a.Softcap, "tie_word_embeddings": true,
		"max_position_embeddings": a.Context, "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2,
		"eos_token_id": 1,
		"rope_parameters": map[string]any{
			"sliding_attention": map[string]any{"rope_type": "default", "rope_theta": 10000.0},
			"full_attention":    map[string]any{"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
		},
	}
	cfg := map[string]any{"model_type": "gemma4", "text_config": text, "eos_token_id": []int{1, 106}}
	if s.Bits != 0 {
		q := map[string]any{"bits": s.Bits, "group_size": s.Group, "mode": "affine"}
		for i := 0; i < s.Layers; i++ {
			q[fmt.Sprintf("language_model.model.layers.%d.router.proj", i)] = map[string]any{"bits": 8, "group_size": s.Group}
		}
		cfg["quantization"] = q
	}
	return json.MarshalIndent(cfg, "", " ")
}

// Build returns the config.json and one safetensors image of the model,
// filled with seeded random values. alloc provides the image's memory (nil:
// make([]byte)); the image may be many GiB, so callers check Size first.
func Build(a Arch, s Spec, alloc func(n int) ([]byte, error)) (config, image []byte, err error) {
	if err := s.normalize(a); err != nil {
		return nil, nil, err
	}
	if config, err = Config(a, s); err != nil {
		return nil, nil, err
	}
	ts := a.tensors(s)
	// As the safetensors library writes files: wider elements first, then by
	// name, so every tensor is aligned to its element size.
	sort.Slice(ts, func(i, j int) bool {
		if a, b := ts[i].dt.Size(), ts[j].dt.Size(); a != b {
			return a > b
		}
		return ts[i].name < ts[j].name
	})
	header := map[string]any{"__metadata__": map[string]string{"format": "mlx"}}
	var off int64
	for _, t := range ts {
		n := t.bytes()
		header[t.name] = map[string]any{"dtype": t.dt.String(), "shape": t.shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return nil, nil, err
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	total := 8 + int64(len(hj)) + off
	if alloc == nil {
		alloc = func(n int) ([]byte, error) { return make([]byte, n), nil }
	}
	if image, err = alloc(int(total)); err != nil {
		return nil, nil, err
	}
	binary.LittleEndian.PutUint64(image, uint64(len(hj)))
	copy(image[8:], hj)
	data := image[8+len(hj):]
	// Fill tensors in parallel; each tensor has its own seeded stream.
	offsets := make([]int64, len(ts))
	var pos int64
	for i, t := range ts {
		offsets[i] = pos
		pos += t.bytes()
	}
	var wg sync.WaitGroup
	work := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fill(data[offsets[i]:offsets[i]+ts[i].bytes()], &ts[i], uint64(i), s.Seed)
			}
		}()
	}
	for i := range ts {
		work <- i
	}
	close(work)
	wg.Wait()
	return config, image, nil
}

// fill writes tensor t's values into b, from a stream seeded by seed and i.
func fill(b []byte, t *tensor, i, seed uint64) {
	state := seed ^ (i+1)*0x9e3779b97f4a7c15
	next := func() uint64 { // splitmix64
		state += 0x9e3779b97f4a7c15
		z := state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	put := func(v float32) uint16 { return dtype.F32ToBF16(v) }
	switch t.fill {
	case fillOnes:
		one := put(1)
		for k := 0; k+1 < len(b); k += 2 {
			binary.LittleEndian.PutUint16(b[k:], one)
		}
	case fillScale:
		v := put(2 * t.amp / float32(int(1)<<t.bits-1))
		for k := 0; k+1 < len(b); k += 2 {
			binary.LittleEndian.PutUint16(b[k:], v)
		}
	case fillBias:
		v := put(-t.amp)
		for k := 0; k+1 < len(b); k += 2 {
			binary.LittleEndian.PutUint16(b[k:], v)
		}
	case fillRandom:
		if t.dt == dtype.BF16 {
			for k := 0; k+1 < len(b); k += 2 {
				u := float32(next()>>40) / (1 << 24) // [0, 1)
				binary.LittleEndian.PutUint16(b[k:], put((2*u-1)*t.amp))
			}
			return
		}
		k := 0
		for ; k+8 <= len(b); k += 8 {
			binary.LittleEndian.PutUint64(b[k:], next())
		}
		for ; k < len(b); k++ {
			b[k] = byte(next())
		}
	}
}
