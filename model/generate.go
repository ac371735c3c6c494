package model

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/gemmoe/gemmoe/kernels"
)

// GenerateOptions control a generation.
type GenerateOptions struct {
	SampleOptions
	MaxTokens int // most tokens to generate (default 256)
	// StopIDs end generation in addition to the model's eos ids.
	StopIDs []int32
}

// Token is one generated token.
type Token struct {
	ID int32
}

// Stats describe a finished generation.
type Stats struct {
	PromptTokens    int
	GeneratedTokens int
	PromptTime      time.Duration
	GenTime         time.Duration
	Reason          string // "eos" or "length"
}

// PromptTPS is prompt tokens per second.
func (s Stats) PromptTPS() float64 { return rate(s.PromptTokens, s.PromptTime) }

// GenTPS is generated tokens per second (the first token comes with the prompt).
func (s Stats) GenTPS() float64 { return rate(s.GeneratedTokens-1, s.GenTime) }

func rate(n int, d time.Duration) float64 {
	if n <= 0 || d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Generate feeds prompt to the session (after what it holds) and streams
// the generated tokens. It stops on an eos id, a stop id, MaxTokens or
// cancellation; stats (if not nil) is filled when the sequence ends. The
// last generated token is not fed back into the cache until the next call
// feeds it, so a chat session can continue from it.
func (s *Session) Generate(ctx context.Context, prompt []int32, opts GenerateOptions, stats *Stats) iter.Seq2[Token, error] {
	return func(yield func(Token, error) bool) {
		if err := opts.Validate(); err != nil {
			yield(Token{}, err)
			return
		}
		if opts.MaxTokens <= 0 {
			opts.MaxTokens = 256
		}
		if len(prompt) == 0 {
			yield(Token{}, fmt.Errorf("generate: empty prompt"))
			return
		}
		if need := s.Len() + len(prompt) + opts.MaxTokens - 1; need > s.m.ContextLength() {
			yield(Token{}, fmt.Errorf("generate: %d held + %d prompt + %d new tokens exceed the context length %d",
				s.Len(), len(prompt), opts.MaxTokens, s.m.ContextLength()))
			return
		}
		stop := map[int32]bool{}
		for _, id := range opts.StopIDs {
			stop[id] = true
		}
		sampler := NewSampler(opts.SampleOptions)
		// On a backend that picks the best logits where they lie, read only
		// as many as settle the sampler's choice.
		vocab := s.m.Config.VocabSize
		if _, ok := s.m.Backend.(kernels.Selector); ok && !s.m.opts.ReadAllLogits {
			s.top = sampler.selectable(vocab)
		}
		defer func() { s.top = 0 }()
		pick := func(logits []float32) int32 {
			if s.top > 0 {
				return sampler.sampleFrom(logits, s.topIDs, vocab, s.tokens)
			}
			return sampler.Sample(logits, s.tokens)
		}
		st := Stats{PromptTokens: len(prompt), Reason: "length"}
		defer func() {
			if stats != nil {
				*stats = st
			}
		}()
		t0 := time.Now()
		logits, err := s.forwardLast(ctx, prompt)
		if err != nil {
			yield(Token{}, err)
			return
		}
		st.PromptTime = time.Since(t0)
		t1 := time.Now()
		for {
			id := pick(logits)
			st.GeneratedTokens++
			st.GenTime = time.Since(t1)
			if !yield(Token{ID: id}, nil) {
				return
			}
			if s.m.IsEOS(id) || stop[id] {
				st.Reason = "eos"
				return
			}
			if st.GeneratedTokens >= opts.MaxTokens {
				return
			}
			s.tok1[0] = id
			if logits, err = s.forwardLast(ctx, s.tok1[:]); err != nil {
				yield(Token{}, err)
				return
			}
		}
	}
}
