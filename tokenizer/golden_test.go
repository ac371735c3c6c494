package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

var testdataDir = filepath.Join("..", "testdata")

var (
	gemma3Once sync.Once
	gemma3Tok  *Tokenizer
	gemma3Err  error
	gemma4Once sync.Once
	gemma4Tok  *Tokenizer
	gemma4Err  error
)

// gemma3 loads the real Gemma 3 tokenizer once per test binary.
func gemma3(tb testing.TB) *Tokenizer {
	tb.Helper()
	gemma3Once.Do(func() {
		gemma3Tok, gemma3Err = Load(filepath.Join(testdataDir, "tokenizer", "gemma3-tokenizer.json.gz"))
	})
	if gemma3Err != nil {
		tb.Fatal(gemma3Err)
	}
	return gemma3Tok
}

// gemma4 loads the Gemma-4-style tokenizer once per test binary.
func gemma4(tb testing.TB) *Tokenizer {
	tb.Helper()
	gemma4Once.Do(func() {
		gemma4Tok, gemma4Err = Load(filepath.Join(testdataDir, "tokenizer", "gemma4style-tokenizer.json.gz"))
	})
	if gemma4Err != nil {
		tb.Fatal(gemma4Err)
	}
	return gemma4Tok
}

// goldenEncoding is one entry of gemma3-encodings.json (Hugging Face
// tokenizers 0.23).
type goldenEncoding struct {
	Text               string   `json:"text"`
	IDs                []int32  `json:"ids"`
	IDsWithBOS         []int32  `json:"ids_with_bos"`
	Tokens             []string `json:"tokens"`
	Decoded            string   `json:"decoded"`
	DecodedSkipSpecial string   `json:"decoded_skip_special"`
}

func loadGoldenEncodings(tb testing.TB) []goldenEncoding {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(testdataDir, "tokenizer", "gemma3-encodings.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var g []goldenEncoding
	if err := json.Unmarshal(data, &g); err != nil {
		tb.Fatal(err)
	}
	if len(g) == 0 {
		tb.Fatal("no golden encodings")
	}
	return g
}

func TestGoldenEncodings(t *testing.T) {
	tok := gemma3(t)
	for _, g := range loadGoldenEncodings(t) {
		t.Run("", func(t *testing.T) {
			if got := tok.Encode(g.Text, false); !slices.Equal(got, g.IDs) {
				t.Errorf("Encode(%q, false)\n got %v\nwant %v", g.Text, got, g.IDs)
			}
			if got := tok.Encode(g.Text, true); !slices.Equal(got, g.IDsWithBOS) {
				t.Errorf("Encode(%q, true)\n got %v\nwant %v", g.Text, got, g.IDsWithBOS)
			}
			var pieces []string
			for _, id := range g.IDs {
				pieces = append(pieces, tok.Piece(id))
			}
			if !slices.Equal(pieces, g.Tokens) && len(g.Tokens) > 0 {
				t.Errorf("pieces of %q\n got %q\nwant %q", g.Text, pieces, g.Tokens)
			}
			if got := tok.Decode(g.IDs, false); got != g.Decoded {
				t.Errorf("Decode(%v, false) = %q, want %q", g.IDs, got, g.Decoded)
			}
			if got := tok.Decode(g.IDs, true); got != g.DecodedSkipSpecial {
				t.Errorf("Decode(%v, true) = %q, want %q", g.IDs, got, g.DecodedSkipSpecial)
			}
		})
	}
}
