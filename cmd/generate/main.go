// Command generate runs a Gemma 4 model: it continues a prompt, chats,
// scores text, or describes a checkpoint.
//
//	go run ./cmd/generate -model DIR -prompt "Why is the sky blue?"
//	go run ./cmd/generate -model DIR -chat
//	go run ./cmd/generate -model DIR -info
//
// See README.md for the flags and the JSON contract for scripts.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gemmoe/gemmoe"
	"github.com/gemmoe/gemmoe/demo"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/tokenizer"
	"github.com/gemmoe/gemmoe/tokenizer/chat"
)

type flags struct {
	model, prompt, system, backend, tokenizer string
	tokens, messages, tools                   string
	chat, think, jsonOut, info, score         bool
	tokenize, raw, noBOS, render              bool
	maxTokens, topK                           int
	temp, topP, minP, repeatPenalty           float64
	seed                                      uint64
	set                                       map[string]bool // flags given on the command line
}

func main() {
	var f flags
	fs := flag.NewFlagSet("generate", flag.ExitOnError)
	fs.StringVar(&f.model, "model", "", "model directory (config.json, *.safetensors, tokenizer.json); default: the built-in demo model")
	fs.StringVar(&f.prompt, "prompt", "", "prompt text (default: read stdin)")
	fs.StringVar(&f.system, "system", "", "system prompt")
	fs.BoolVar(&f.chat, "chat", false, "interactive chat; the KV cache is kept between turns")
	fs.BoolVar(&f.think, "think", false, "let the model think before answering")
	fs.IntVar(&f.maxTokens, "max-tokens", 256, "most tokens to generate")
	fs.Float64Var(&f.temp, "temp", 0, "sampling temperature (0: greedy; default: the model's generation_config.json, else greedy)")
	fs.IntVar(&f.topK, "top-k", 0, "keep the k most likely tokens (0: all)")
	fs.Float64Var(&f.topP, "top-p", 0, "nucleus sampling threshold (0: off)")
	fs.Float64Var(&f.minP, "min-p", 0, "drop tokens below min-p × the top probability (0: off)")
	fs.Float64Var(&f.repeatPenalty, "repeat-penalty", 0, "penalty for tokens seen in the last 64 (1 or 0: off)")
	fs.Uint64Var(&f.seed, "seed", 0, "random seed (same seed, same tokens)")
	fs.StringVar(&f.backend, "backend", "auto", "compute backend: auto, cpu, cpu-f64, cpu-f32, cpu-int24, cpu-int8, cuda, metal, metal-emulated")
	fs.StringVar(&f.tokenizer, "tokenizer", "", "tokenizer.json to use instead of the model's")
	fs.BoolVar(&f.jsonOut, "json", false, "machine output: one JSON object per token, then a summary")
	fs.BoolVar(&f.info, "info", false, "print the model summary and exit")
	fs.StringVar(&f.tokens, "tokens", "", "comma-separated token ids to use as the prompt (no template, no BOS)")
	fs.BoolVar(&f.score, "score", false, "score the prompt: per-token NLL, top-1 and perplexity as JSON")
	fs.BoolVar(&f.tokenize, "tokenize", false, "print the prompt's token ids as JSON and exit")
	fs.BoolVar(&f.raw, "raw", false, "feed the prompt as is, without the chat template")
	fs.BoolVar(&f.noBOS, "no-bos", false, "with -raw: do not add BOS")
	fs.StringVar(&f.messages, "messages", "", "JSON file with a list of chat messages (apply_chat_template form)")
	fs.StringVar(&f.tools, "tools", "", "JSON file with a list of tool schemas (OpenAI function format)")
	fs.BoolVar(&f.render, "render", false, "print the rendered prompt text and exit")
	fs.Parse(os.Args[1:])
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, f, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "generate:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags, stdin io.Reader, out, log io.Writer) error {
	useDemo := f.model == ""
	if useDemo {
		if f.chat || f.messages != "" || f.system != "" || f.think || f.tools != "" {
			return errors.New("the built-in demo model completes Go code and has no chat training: give -model DIR for chat")
		}
		if f.tokenizer != "" {
			return errors.New("-tokenizer needs -model DIR")
		}
		f.raw = true // a code model: prompts are continued as they are
		fmt.Fprintf(log, "no -model given: using %s\n", demo.Name)
	}
	if f.info {
		src, err := openSource(f.model)
		if err != nil {
			return err
		}
		defer src.Close()
		s := src.Summarize()
		if f.jsonOut {
			return json.NewEncoder(out).Encode(s)
		}
		s.Print(out)
		return nil
	}
	if f.tokenize || f.render {
		// No weights needed: only the tokenizer and the template.
		tok, err := loadTokenizer(f)
		if err != nil {
			return err
		}
		text, ids, err := buildPrompt(f, tok, stdin)
		if err != nil {
			return err
		}
		if f.render {
			_, err := io.WriteString(out, text)
			return err
		}
		return json.NewEncoder(out).Encode(map[string]any{"ids": ids})
	}
	opts := []gemmoe.Option{gemmoe.WithBackend(f.backend)}
	if f.tokenizer != "" {
		opts = append(opts, gemmoe.WithTokenizer(f.tokenizer))
	}
	t0 := time.Now()
	var m *gemmoe.Model
	var err error
	if useDemo {
		m, err = gemmoe.LoadDemo(ctx, opts...)
	} else {
		stopProgress := progress(log, "loading "+f.model)
		m, err = gemmoe.Load(ctx, f.model, opts...)
		stopProgress()
	}
	if err != nil {
		return err
	}
	defer m.Close()
	if m.BackendNote != "" {
		fmt.Fprintln(log, "backend auto:", m.BackendNote)
	}
	fmt.Fprintf(log, "loaded in %.2fs on %s\n", time.Since(t0).Seconds(), m.Backend())
	gen := samplingOptions(f, m.Defaults())
	if f.chat {
		return interactive(ctx, m, f, gen, stdin, out, log)
	}
	tok := m.Tokenizer()
	if tok == nil && f.tokens == "" {
		return errors.New("the model has no tokenizer.json: give -tokenizer FILE, or -tokens ids")
	}
	_, ids, err := buildPrompt(f, tok, stdin)
	if err != nil {
		return err
	}
	if f.score {
		return score(ctx, m.Inner(), ids, out)
	}
	return generate(ctx, m, tok, ids, gen, f.jsonOut, out, log)
}

// buildPrompt returns the prompt text (when there is one) and its ids.
func buildPrompt(f flags, tok *tokenizer.Tokenizer, stdin io.Reader) (string, []int32, error) {
	if f.tokens != "" {
		ids, err := parseIDs(f.tokens)
		return "", ids, err
	}
	if tok == nil {
		return "", nil, errors.New("no tokenizer: give -tokenizer FILE or -tokens ids")
	}
	var req chat.Request
	if f.messages != "" {
		b, err := os.ReadFile(f.messages)
		if err != nil {
			return "", nil, err
		}
		if err := json.Unmarshal(b, &req.Messages); err != nil {
			return "", nil, fmt.Errorf("%s: want a JSON list of messages: %w", f.messages, err)
		}
	} else {
		text := f.prompt
		if text == "" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return "", nil, err
			}
			text = strings.TrimRight(string(b), "\n")
		}
		if text == "" {
			return "", nil, errors.New("empty prompt: give -prompt, -tokens, -messages or text on stdin")
		}
		if f.raw {
			ids := tok.Encode(text, !f.noBOS)
			return text, ids, nil
		}
		if f.system != "" {
			req.Messages = append(req.Messages, chat.Message{Role: "system", Content: chat.Text(f.system)})
		}
		req.Messages = append(req.Messages, chat.Message{Role: "user", Content: chat.Text(text)})
	}
	if f.tools != "" {
		b, err := os.ReadFile(f.tools)
		if err != nil {
			return "", nil, err
		}
		if err := json.Unmarshal(b, &req.Tools); err != nil {
			return "", nil, fmt.Errorf("%s: want a JSON list of tools: %w", f.tools, err)
		}
	}
	req.AddGenerationPrompt, req.EnableThinking = true, f.think
	text, err := gemmoe.Render(tok, &req)
	if err != nil {
		return "", nil, err
	}
	return text, tok.Encode(text, false), nil
}

func parseIDs(s string) ([]int32, error) {
	var ids []int32
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		v, err := strconv.ParseInt(p, 10, 32)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("-tokens: %q is not a token id", p)
		}
		ids = append(ids, int32(v))
	}
	if len(ids) == 0 {
		return nil, errors.New("-tokens: no ids")
	}
	return ids, nil
}

func loadTokenizer(f flags) (*tokenizer.Tokenizer, error) {
	if f.model == "" {
		return demo.Tokenizer()
	}
	path := f.tokenizer
	if path == "" {
		path = filepath.Join(f.model, "tokenizer.json")
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("no tokenizer: %s has no tokenizer.json (give -tokenizer FILE)", f.model)
		}
	}
	return tokenizer.Load(path)
}

// openSource opens the checkpoint (the demo model when dir is "").
func openSource(dir string) (*loader.Model, error) {
	if dir == "" {
		return demo.Open()
	}
	return loader.Open(dir)
}

type tokenLine struct {
	ID   int32  `json:"id"`
	Text string `json:"text"`
}

type doneLine struct {
	Done         bool    `json:"done"`
	Reason       string  `json:"reason"`
	PromptTokens int     `json:"prompt_tokens"`
	GenTokens    int     `json:"generated_tokens"`
	PromptTPS    float64 `json:"prompt_tps"`
	GenTPS       float64 `json:"gen_tps"`
	PeakRSS      int64   `json:"peak_rss_bytes"`
}

func generate(ctx context.Context, m *gemmoe.Model, tok *tokenizer.Tokenizer, ids []int32, opts gemmoe.GenerateOptions,
	asJSON bool, out, log io.Writer) error {
	s, err := m.Inner().NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	var dec *tokenizer.StreamDecoder
	if tok != nil {
		dec = tok.NewStreamDecoder(true)
	}
	enc := json.NewEncoder(out)
	w := bufio.NewWriter(out)
	defer w.Flush()
	var st model.Stats
	inner := model.GenerateOptions{MaxTokens: opts.MaxTokens, SampleOptions: model.SampleOptions{Temperature: opts.Temperature,
		TopK: opts.TopK, TopP: opts.TopP, MinP: opts.MinP, RepeatPenalty: opts.RepeatPenalty, Seed: opts.Seed}}
	for t, err := range s.Generate(ctx, ids, inner, &st) {
		if err != nil {
			return err
		}
		text := ""
		if dec != nil && !m.Inner().IsEOS(t.ID) {
			text = dec.Add(t.ID)
		}
		if asJSON {
			if err := enc.Encode(tokenLine{ID: t.ID, Text: text}); err != nil {
				return err
			}
			continue
		}
		w.WriteString(text)
		w.Flush()
	}
	if dec != nil && !asJSON {
		w.WriteString(dec.Flush())
		w.WriteString("\n")
		w.Flush()
	}
	if asJSON {
		return enc.Encode(doneLine{Done: true, Reason: st.Reason, PromptTokens: st.PromptTokens, GenTokens: st.GeneratedTokens,
			PromptTPS: st.PromptTPS(), GenTPS: st.GenTPS(), PeakRSS: peakRSS()})
	}
	printStats(log, st)
	return nil
}

func printStats(log io.Writer, st model.Stats) {
	fmt.Fprintf(log, "==========\nPrompt: %d tokens, %.3f tokens-per-sec\nGeneration: %d tokens, %.3f tokens-per-sec\nPeak memory: %.3f GB\n",
		st.PromptTokens, st.PromptTPS(), st.GeneratedTokens, st.GenTPS(), float64(peakRSS())/1e9)
}

// score prints per-token negative log-likelihoods of ids under the model.
func score(ctx context.Context, m *model.Model, ids []int32, out io.Writer) error {
	if len(ids) < 2 {
		return errors.New("-score needs at least 2 tokens")
	}
	s, err := m.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	logits, err := s.ForwardAll(ctx, ids[:len(ids)-1], nil)
	if err != nil {
		return err
	}
	nll := make([]float64, len(logits))
	top1 := make([]int32, len(logits))
	var total float64
	for i, row := range logits {
		best := 0
		mx := math.Inf(-1)
		for j, v := range row {
			if float64(v) > mx {
				mx, best = float64(v), j
			}
		}
		var z float64
		for _, v := range row {
			z += math.Exp(float64(v) - mx)
		}
		nll[i] = -(float64(row[ids[i+1]]) - mx - math.Log(z))
		top1[i] = int32(best)
		total += nll[i]
	}
	return json.NewEncoder(out).Encode(map[string]any{
		"tokens": ids, "nll": nll, "top1": top1, "ppl": math.Exp(total / float64(len(nll))),
	})
}

func interactive(ctx context.Context, m *gemmoe.Model, f flags, gen gemmoe.GenerateOptions, stdin io.Reader, out, log io.Writer) error {
	if m.Tokenizer() == nil {
		return errors.New("chat needs a tokenizer: give -tokenizer FILE")
	}
	c := m.NewChat(gemmoe.ChatOptions{System: f.system, Think: f.think, GenerateOptions: gen})
	defer c.Close()
	in := bufio.NewScanner(stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for {
		fmt.Fprint(log, "> ")
		if !in.Scan() {
			fmt.Fprintln(log)
			return in.Err()
		}
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		if line == "/bye" || line == "/exit" {
			return nil
		}
		for ev, err := range c.Send(ctx, line) {
			if err != nil {
				return err
			}
			fmt.Fprint(out, ev.Text)
		}
		fmt.Fprintln(out)
		printStats(log, c.Stats())
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// progress prints a spinner on log until stop is called (for large maps).
func progress(log io.Writer, what string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		shown := false
		for {
			select {
			case <-done:
				if shown {
					fmt.Fprint(log, "\r\033[K")
				}
				return
			case <-t.C:
				shown = true
				fmt.Fprintf(log, "\r%s... %.0fs", what, time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(done); <-finished }
}

// samplingOptions starts from the model's defaults (generation_config.json)
// and applies the sampling flags that were given.
func samplingOptions(f flags, o gemmoe.GenerateOptions) gemmoe.GenerateOptions {
	o.MaxTokens, o.Seed = f.maxTokens, f.seed
	if f.set["temp"] {
		o.Temperature = f.temp
	}
	if f.set["top-k"] {
		o.TopK = f.topK
	}
	if f.set["top-p"] {
		o.TopP = f.topP
	}
	if f.set["min-p"] {
		o.MinP = f.minP
	}
	if f.set["repeat-penalty"] {
		o.RepeatPenalty = f.repeatPenalty
	}
	return o
}
