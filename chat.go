package gemmoe

import (
	"context"
	"fmt"
	"iter"
	"strings"

	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/tokenizer/chat"
)

// ChatOptions configure a chat session.
type ChatOptions struct {
	System string      // system prompt ("" for none)
	Think  bool        // let the model think before answering (Gemma 4)
	Tools  []chat.Tool // tool declarations (OpenAI function format)
	GenerateOptions
}

// Chat is a conversation that owns a KV cache and reuses it across turns:
// each turn feeds only the tokens the cache does not hold yet. A Chat is
// used by one goroutine at a time.
type Chat struct {
	m     *Model
	opts  ChatOptions
	msgs  []chat.Message
	sess  *model.Session
	stats model.Stats
}

// NewChat starts a conversation.
func (m *Model) NewChat(opts ChatOptions) *Chat {
	c := &Chat{m: m, opts: opts}
	if opts.System != "" {
		c.msgs = append(c.msgs, chat.Message{Role: "system", Content: chat.Text(opts.System)})
	}
	return c
}

// Messages returns the conversation so far.
func (c *Chat) Messages() []chat.Message { return c.msgs }

// Stats describe the last turn (prompt tokens are those fed this turn).
func (c *Chat) Stats() model.Stats { return c.stats }

// Close releases the conversation's KV cache.
func (c *Chat) Close() {
	if c.sess != nil {
		c.sess.Close()
		c.sess = nil
	}
}

// Render returns the prompt text for the conversation plus the next model
// turn, in the model's chat format.
func (c *Chat) Render() (string, error) {
	return Render(c.m.tok, &chat.Request{Messages: c.msgs, Tools: c.opts.Tools, AddGenerationPrompt: true, EnableThinking: c.opts.Think})
}

// Render renders a chat request in the format the tokenizer's model uses:
// Gemma 4 (<|turn>) or, for Gemma 3 vocabularies, <start_of_turn>.
func Render(tok interface{ TokenID(string) (int32, bool) }, r *chat.Request) (string, error) {
	if tok != nil {
		if _, g4 := tok.TokenID("<|turn>"); !g4 {
			if _, g3 := tok.TokenID("<start_of_turn>"); g3 {
				return chat.RenderGemma3(r)
			}
		}
	}
	return chat.RenderGemma4(r)
}

// Send adds a user turn and streams the model's answer. The answer joins
// the conversation when the stream ends (also when it is stopped early).
func (c *Chat) Send(ctx context.Context, text string) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := c.m.needTokenizer(); err != nil {
			yield(Event{}, err)
			return
		}
		c.msgs = append(c.msgs, chat.Message{Role: "user", Content: chat.Text(text)})
		prompt, err := c.Render()
		if err != nil {
			yield(Event{}, err)
			return
		}
		ids := c.m.tok.Encode(prompt, false)
		feed, err := c.reuse(ids)
		if err != nil {
			yield(Event{}, err)
			return
		}
		var reply []int32
		streamTokens(ctx, c.m, c.sess, feed, c.opts.GenerateOptions, &c.stats,
			func(id int32) { reply = append(reply, id) }, yield)
		full := c.m.tok.Decode(reply, false)
		c.msgs = append(c.msgs, chat.Message{Role: "assistant", Content: chat.Text(strings.TrimSpace(full))})
	}
}

// reuse keeps the longest prefix of ids the session's cache already holds
// and returns the tokens still to feed (at least one).
func (c *Chat) reuse(ids []int32) ([]int32, error) {
	if c.sess != nil {
		held := c.sess.Tokens()
		n := 0
		for n < len(held) && n < len(ids)-1 && held[n] == ids[n] {
			n++
		}
		if c.sess.Truncate(n) == nil {
			return ids[n:], nil
		}
		c.sess.Close()
		c.sess = nil
	}
	s, err := c.m.model.NewSession()
	if err != nil {
		return nil, fmt.Errorf("chat: %w", err)
	}
	c.sess = s
	return ids, nil
}
