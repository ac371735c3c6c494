package gemmoe_test

import (
	"context"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe"
	"github.com/gemmoe/gemmoe/model"
	"github.com/gemmoe/gemmoe/tokenizer/chat"
)

// TestChatReusesCache: the second turn feeds only what the cache lacks, and
// its answer equals greedy decoding of the whole rendered conversation in a
// fresh session. (The demo model is not chat-trained; only the mechanics are
// checked.)
func TestChatReusesCache(t *testing.T) {
	ctx := context.Background()
	m, err := gemmoe.LoadDemo(ctx, gemmoe.WithBackend("cpu"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	opts := gemmoe.ChatOptions{GenerateOptions: gemmoe.GenerateOptions{MaxTokens: 12}}
	c := m.NewChat(opts)
	defer c.Close()
	send := func(text string) string {
		var sb strings.Builder
		for ev, err := range c.Send(ctx, text) {
			if err != nil {
				t.Fatal(err)
			}
			sb.WriteString(ev.Text)
		}
		return sb.String()
	}
	send("func add(a, b int) int {")
	second := send("func sub(a, b int) int {")
	fed := c.Stats().PromptTokens

	msgs := c.Messages()
	if len(msgs) != 4 || msgs[1].Role != "assistant" || msgs[3].Role != "assistant" {
		t.Fatalf("conversation: %+v", msgs)
	}
	prompt, err := gemmoe.Render(m.Tokenizer(), &chat.Request{Messages: msgs[:3], AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	ids := m.Tokenizer().Encode(prompt, false)
	// Gemma 4's template renders an earlier answer without the empty thought
	// channel its generation prompt had, so reuse ends where the first
	// answer starts: the first user turn is not fed again.
	first := m.Tokenizer().Encode(mustRender(t, m, msgs[:1]), false)
	reused := 0
	for reused < len(first) && first[reused] == ids[reused] {
		reused++
	}
	if reused < 5 || fed != len(ids)-reused {
		t.Fatalf("the second turn fed %d of its %d prompt tokens; %d were held", fed, len(ids), reused)
	}

	s, err := m.Inner().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var want strings.Builder
	dec := m.Tokenizer().NewStreamDecoder(true)
	for tok, err := range s.Generate(ctx, ids, model.GenerateOptions{MaxTokens: 12}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if m.Inner().IsEOS(tok.ID) {
			break
		}
		want.WriteString(dec.Add(tok.ID))
	}
	want.WriteString(dec.Flush())
	if second != want.String() {
		t.Fatalf("second answer through the reused cache %q, from scratch %q", second, want.String())
	}
}

func mustRender(t *testing.T, m *gemmoe.Model, msgs []chat.Message) string {
	t.Helper()
	s, err := gemmoe.Render(m.Tokenizer(), &chat.Request{Messages: msgs, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
