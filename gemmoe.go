// Package gemmoe runs Gemma 4 mixture-of-experts language models from Go:
// MLX-quantized or bf16 safetensors checkpoints, memory-mapped, on a pure-Go
// CPU backend everywhere, or on CUDA or Metal where present.
//
//	m, err := gemmoe.Load(ctx, "path/to/model", gemmoe.WithBackend("auto"))
//	defer m.Close()
//	text, err := m.Generate(ctx, "func main() {", gemmoe.GenerateOptions{MaxTokens: 64})
//
// A Model is safe to share between goroutines; each Chat owns its KV cache
// and reuses it across turns.
package gemmoe

import (
	"context"
	"fmt"
	"iter"
	"strings"

	"github.com/gemmoe/gemmoe/backend"
	"github.com/gemmoe/gemmoe/demo"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/tokenizer"
)

// Option configures Load.
type Option func(*loadConfig)

type loadConfig struct {
	backend   string
	tokenizer string
	context   int
	chunk     int
}

// WithBackend picks the compute backend: "auto" (default), "cpu", "cuda",
// "metal" or "metal-emulated".
func WithBackend(name string) Option { return func(c *loadConfig) { c.backend = name } }

// WithTokenizer loads the tokenizer from path (a tokenizer.json, optionally
// gzipped) instead of the model directory's.
func WithTokenizer(path string) Option { return func(c *loadConfig) { c.tokenizer = path } }

// WithContextLength caps the context (default: the model's).
func WithContextLength(n int) Option { return func(c *loadConfig) { c.context = n } }

// WithPrefillChunk sets how many prompt tokens one forward step carries.
func WithPrefillChunk(n int) Option { return func(c *loadConfig) { c.chunk = n } }

// Model is a loaded model with its tokenizer.
type Model struct {
	src     *loader.Model
	model   *model.Model
	backend kernels.Backend
	tok     *tokenizer.Tokenizer
	// BackendNote says why "auto" passed over faster backends ("" if none).
	BackendNote string
}

// Load opens the model directory at path, maps its weights and places them
// on the chosen backend. A model without tokenizer.json still loads; text
// methods then return an error (token methods work).
func Load(ctx context.Context, path string, opts ...Option) (*Model, error) {
	cfg := options(opts)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	src, err := loader.Open(path)
	if err != nil {
		return nil, err
	}
	var tok *tokenizer.Tokenizer
	tokPath := cfg.tokenizer
	if tokPath == "" {
		tokPath = src.TokenizerPath
	}
	if tokPath != "" {
		if tok, err = tokenizer.Load(tokPath); err != nil {
			src.Close()
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	}
	return place(ctx, src, tok, cfg)
}

// LoadDemo loads the demo model built into the binary (package demo): a
// small Gemma 4 MoE model trained on Go source, for trying gemmoe without
// a download. It completes code; it is not a chat model.
func LoadDemo(ctx context.Context, opts ...Option) (*Model, error) {
	cfg := options(opts)
	src, err := demo.Open()
	if err != nil {
		return nil, err
	}
	tok, err := demo.Tokenizer()
	if err != nil {
		src.Close()
		return nil, err
	}
	return place(ctx, src, tok, cfg)
}

func options(opts []Option) loadConfig {
	cfg := loadConfig{backend: "auto"}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// place puts an opened checkpoint on the configured backend.
func place(ctx context.Context, src *loader.Model, tok *tokenizer.Tokenizer, cfg loadConfig) (*Model, error) {
	if err := ctx.Err(); err != nil {
		src.Close()
		return nil, err
	}
	m := &Model{src: src, tok: tok}
	var err error
	if m.backend, m.BackendNote, err = backend.Open(cfg.backend); err != nil {
		src.Close()
		return nil, err
	}
	m.model, err = model.New(src, m.backend, model.Options{Chunk: cfg.chunk, ContextLength: cfg.context})
	if err != nil {
		m.backend.Close()
		src.Close()
		return nil, err
	}
	return m, nil
}

// Close releases the backend and unmaps the checkpoint.
func (m *Model) Close() error {
	m.model.Close()
	err := m.backend.Close()
	if err2 := m.src.Close(); err == nil {
		err = err2
	}
	return err
}

// Info summarizes the checkpoint.
func (m *Model) Info() loader.Summary { return m.src.Summarize() }

// Backend names the backend in use.
func (m *Model) Backend() string { return m.backend.Name() }

// Tokenizer returns the model's tokenizer, or nil when it has none.
func (m *Model) Tokenizer() *tokenizer.Tokenizer { return m.tok }

// Inner returns the underlying model (sessions, raw tokens, scoring).
func (m *Model) Inner() *model.Model { return m.model }

// GenerateOptions control sampling and length. The zero value decodes
// greedily up to 256 tokens.
type GenerateOptions struct {
	MaxTokens     int
	Temperature   float64
	TopK          int
	TopP          float64
	MinP          float64
	RepeatPenalty float64
	Seed          uint64
}

// Defaults returns the model's own sampling settings from its
// generation_config.json (greedy when it does not ask to sample), with
// MaxTokens 256.
func (m *Model) Defaults() GenerateOptions {
	o := GenerateOptions{MaxTokens: 256}
	if g := m.src.Generation; g != nil && g.DoSample {
		o.Temperature, o.TopK, o.TopP, o.MinP, o.RepeatPenalty = g.Temperature, g.TopK, g.TopP, g.MinP, g.RepetitionPenalty
		if o.Temperature == 0 {
			o.Temperature = 1 // transformers' default when sampling
		}
	}
	return o
}

func (o GenerateOptions) inner() model.GenerateOptions {
	return model.GenerateOptions{MaxTokens: o.MaxTokens, SampleOptions: model.SampleOptions{
		Temperature: o.Temperature, TopK: o.TopK, TopP: o.TopP, MinP: o.MinP, RepeatPenalty: o.RepeatPenalty, Seed: o.Seed}}
}

// Event is one step of streamed generation.
type Event struct {
	Token int32  // the generated token id
	Text  string // text completed by this token (may be empty mid-character)
}

func (m *Model) needTokenizer() error {
	if m.tok == nil {
		return fmt.Errorf("the model directory has no tokenizer.json (give one with WithTokenizer)")
	}
	return nil
}

// Stream continues the raw prompt (BOS added, no chat template) and streams
// the generated text.
func (m *Model) Stream(ctx context.Context, prompt string, opts GenerateOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := m.needTokenizer(); err != nil {
			yield(Event{}, err)
			return
		}
		s, err := m.model.NewSession()
		if err != nil {
			yield(Event{}, err)
			return
		}
		defer s.Close()
		streamTokens(ctx, m, s, m.tok.Encode(prompt, true), opts, nil, nil, yield)
	}
}

// Generate continues the raw prompt and returns the generated text.
func (m *Model) Generate(ctx context.Context, prompt string, opts GenerateOptions) (string, error) {
	var sb strings.Builder
	for ev, err := range m.Stream(ctx, prompt, opts) {
		if err != nil {
			return sb.String(), err
		}
		sb.WriteString(ev.Text)
	}
	return sb.String(), nil
}

// streamTokens runs generation on a session and turns tokens into text;
// onToken (if not nil) sees every generated token but the final eos.
func streamTokens(ctx context.Context, m *Model, s *model.Session, prompt []int32, opts GenerateOptions,
	stats *model.Stats, onToken func(int32), yield func(Event, error) bool) bool {
	dec := m.tok.NewStreamDecoder(true)
	for tok, err := range s.Generate(ctx, prompt, opts.inner(), stats) {
		if err != nil {
			yield(Event{}, err)
			return false
		}
		if m.model.IsEOS(tok.ID) {
			break
		}
		if onToken != nil {
			onToken(tok.ID)
		}
		if !yield(Event{Token: tok.ID, Text: dec.Add(tok.ID)}, nil) {
			return false
		}
	}
	if rest := dec.Flush(); rest != "" {
		return yield(Event{Text: rest}, nil)
	}
	return true
}
