package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestWordSplitExact checks the chunking of words before "▁" (and the word
// cache) against merging whole words, on the goldens and on random text
// built from characters that stress the rule: "▁" runs, ">" (which a piece
// has before "▁"), characters that need byte fallback, and digits.
func TestWordSplitExact(t *testing.T) {
	tk := gemma3(t)
	whole := tk.bpe
	whole.splitAt = 0
	texts := []string{}
	for _, g := range loadGoldenEncodings(t) {
		texts = append(texts, g.Text)
	}
	r := rand.New(rand.NewPCG(7, 8))
	alphabet := []string{"▁", " ", "  ", ">", "<", "/", "a", "b", "the", "ing", "é", "😀", "\U000f0000", "𝔘", "1", "2", ".", ",", "x>", "></", "\u0301"}
	for n := 0; n < 3000; n++ {
		var b strings.Builder
		for k := r.IntN(40); k >= 0; k-- {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		texts = append(texts, b.String())
	}
	var sc1, sc2 bpeScratch
	for _, text := range texts {
		seg := normalize(tk.norm, text)
		got := tk.bpe.encodeWord(nil, seg, &sc1)
		want := whole.encodeWord(nil, seg, &sc2)
		if !slices.Equal(got, want) {
			t.Fatalf("%q: chunked %v, whole %v", seg, got, want)
		}
	}
}
