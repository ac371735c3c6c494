// Package demo embeds gemmoe's demo model, so that the first
// `go run ./cmd/generate -prompt "..."` works offline on a fresh clone and
// `go install`ed binaries carry it.
//
// The model is a 13.4M-parameter Gemma 4 mixture-of-experts model (8 layers,
// sliding and full attention with K=V full layers, 16 experts top-4 beside
// a dense MLP, final softcap) trained on the Go standard library's source
// with its own Gemma-format BPE tokenizer (8,192 pieces), quantized to MLX
// 4-bit by cmd/convert: 7.6 MB. It completes Go code; it is not a chat model.
// Its generation_config.json samples (temperature 0.7, top-p 0.95,
// repetition penalty 1.1): greedy decoding of so small a model loops.
// tools/demo has the scripts that made it and its training numbers; the Go
// source it learned from is BSD-licensed (model/LICENSE).
package demo

import (
	"bytes"
	"embed"
	"fmt"
	"unsafe"

	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/tokenizer"
)

//go:embed model/config.json model/generation_config.json model/model.safetensors model/tokenizer.json model/LICENSE
var files embed.FS

// Name describes the demo model in messages.
const Name = "the built-in demo model (Gemma 4 MoE, 13.4M parameters, trained on Go source, 4-bit)"

// Open returns the demo checkpoint. Its weights are copied once from the
// binary into 8-byte-aligned memory (7.6 MB).
func Open() (*loader.Model, error) {
	cfg, err := files.ReadFile("model/config.json")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	raw, err := files.ReadFile("model/model.safetensors")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	words := make([]uint64, (len(raw)+7)/8)
	data := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(raw))
	copy(data, raw)
	m, err := loader.OpenBytes(cfg, data)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	m.Dir = "(built-in demo model)"
	gen, err := files.ReadFile("model/generation_config.json")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if m.Generation, err = loader.ParseGenerationConfig(gen); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if len(m.Generation.EOSTokenIDs) == 0 {
		m.Generation.EOSTokenIDs = m.Config.EOSTokenIDs
	}
	return m, nil
}

// Tokenizer returns the demo model's tokenizer.
func Tokenizer() (*tokenizer.Tokenizer, error) {
	b, err := files.ReadFile("model/tokenizer.json")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	return tokenizer.LoadJSON(bytes.NewReader(b))
}

// License returns the license of the Go source the model was trained on.
func License() string {
	b, _ := files.ReadFile("model/LICENSE")
	return string(b)
}
