package tokenizer

import (
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestAccessorsGemma3(t *testing.T) {
	tk := gemma3(t)
	// Every (piece, id) pair of the goldens.
	for _, g := range loadGoldenEncodings(t) {
		for i, id := range g.IDs {
			if got, ok := tk.TokenID(g.Tokens[i]); !ok || got != id {
				t.Errorf("TokenID(%q) = %d, %v; want %d", g.Tokens[i], got, ok, id)
			}
			if got := tk.Piece(id); got != g.Tokens[i] {
				t.Errorf("Piece(%d) = %q, want %q", id, got, g.Tokens[i])
			}
		}
	}
	// 262,144 model pieces plus <image_soft_token>, an added token with id
	// 262144 (see the file's added_tokens).
	if got := tk.VocabSize(); got != 262145 {
		t.Errorf("VocabSize = %d, want 262145", got)
	}
	if id, ok := tk.TokenID("<image_soft_token>"); !ok || id != 262144 {
		t.Errorf("TokenID(<image_soft_token>) = %d, %v", id, ok)
	}
	if bos, ok := tk.BOS(); !ok || bos != 2 {
		t.Errorf("BOS = %d, %v; want 2", bos, ok)
	}
	for _, id := range []int32{0, 1, 2, 3, 105, 106, 262144} {
		if !tk.IsSpecial(id) {
			t.Errorf("IsSpecial(%d) (%q) = false", id, tk.Piece(id))
		}
	}
	// "\n", "<mask>", "<unused5>", a plain piece, and ids out of range.
	for _, id := range []int32{107, 4, 11, 9259, -1, 262145, 1 << 30} {
		if tk.IsSpecial(id) {
			t.Errorf("IsSpecial(%d) = true", id)
		}
	}
	if p := tk.Piece(-5); p != "" {
		t.Errorf("Piece(-5) = %q", p)
	}
	if _, ok := tk.TokenID("no such piece ever"); ok {
		t.Error("TokenID of an unknown piece succeeded")
	}
	if sp := tk.SpecialTokens(); !slices.Contains(sp, 105) || slices.Contains(sp, 107) {
		t.Errorf("SpecialTokens = %v", sp)
	}
}

// TestAccessorsGemma4Style checks the renamed tokens of the Gemma-4-style
// file (see testdata/tokenizer/README.md).
func TestAccessorsGemma4Style(t *testing.T) {
	tk := gemma4(t)
	want := map[string]int32{
		"<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48, "<tool_call|>": 49, "<|tool_response>": 50,
		"<tool_response|>": 51, `<|"|>`: 52, "<|think|>": 98, "<|channel>": 100, "<channel|>": 101,
		"<|turn>": 105, "<turn|>": 106,
	}
	for piece, id := range want {
		if got, ok := tk.TokenID(piece); !ok || got != id {
			t.Errorf("TokenID(%q) = %d, %v; want %d", piece, got, ok, id)
		}
		if !tk.IsSpecial(id) {
			t.Errorf("IsSpecial(%d) = false", id)
		}
		if got := tk.Encode(piece, false); !slices.Equal(got, []int32{id}) {
			t.Errorf("Encode(%q) = %v", piece, got)
		}
	}
}

// TestConcurrentEncode checks that one Tokenizer serves many goroutines.
func TestConcurrentEncode(t *testing.T) {
	tk := gemma3(t)
	golden := loadGoldenEncodings(t)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				for _, g := range golden {
					if got := tk.Encode(g.Text, true); !slices.Equal(got, g.IDsWithBOS) {
						errs <- g.Text
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("concurrent Encode(%q) differs", e)
	}
}

func TestLongInputs(t *testing.T) {
	tk := gemma3(t)
	// A long line with no added token in it is one BPE word.
	line := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2000)
	ids := tk.Encode(line, false)
	if got := tk.Decode(ids, false); got != line {
		t.Fatal("long line does not round-trip")
	}
	one := tk.Encode("The quick brown fox jumps over the lazy dog. ", false)
	if len(ids) > 2000*len(one)+2000 {
		t.Errorf("%d ids for 2000 sentences of %d", len(ids), len(one))
	}
}

// TestStreamReplaceAfterFuse covers a Replace step after Fuse, whose
// literal pattern can straddle two tokens.
func TestStreamReplaceAfterFuse(t *testing.T) {
	doc := tinyDoc()
	doc["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{
		map[string]any{"type": "Fuse"},
		map[string]any{"type": "Replace", "pattern": map[string]any{"String": "abc"}, "content": "X"},
	}}
	tk := loadDoc(t, doc)
	for _, ids := range [][]int32{{3, 4, 5}, {3, 6, 5, 7}, {6, 6, 5}, {3, 3, 4, 4, 5, 3}, {7}, {3, 4}} {
		if got, want := streamAll(t, tk, ids, false), tk.Decode(ids, false); got != want {
			t.Errorf("ids %v: stream %q, Decode %q", ids, got, want)
		}
	}
	if got := tk.Decode([]int32{3, 6, 5, 7}, false); got != "aXX" {
		t.Errorf("Decode = %q, want aXX", got)
	}
}
