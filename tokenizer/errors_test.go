package tokenizer

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadErrors checks that each kind of bad input gives a clear error
// (and no panic).
func TestLoadErrors(t *testing.T) {
	good := docJSON(t, tinyDoc())
	modified := func(f func(d map[string]any)) string {
		d := tinyDoc()
		f(d)
		return docJSON(t, d)
	}
	tests := []struct {
		name  string
		input string
		want  string // a substring of the error
	}{
		{"empty input", "", "empty document"},
		{"not an object", `[1, 2]`, "not a JSON object"},
		{"truncated JSON", good[:len(good)/2], "unexpected end of input"},
		{"syntax error", strings.Replace(good, `"model":`, `"model"`, 1), `want ':'`},
		{"trailing data", good + " {}", "after the top-level object"},
		{"bad escape", strings.Replace(good, `"abc":7`, `"ab\qc":7`, 1), `invalid escape`},
		{"no model", `{"version": "1.0"}`, `no "model"`},
		{"unknown model type", modified(func(d map[string]any) { model(d)["type"] = "Unigram" }), `unsupported model type "Unigram"`},
		{"unigram vocabulary", modified(func(d map[string]any) { model(d)["vocab"] = [][]any{{"a", -1.5}} }), "Unigram"},
		{"no vocabulary", modified(func(d map[string]any) { delete(model(d), "vocab") }), `no "vocab"`},
		{"non-integer id", strings.Replace(good, `"a":3`, `"a":3.5`, 1), "integer id"},
		{"negative id", strings.Replace(good, `"a":3`, `"a":-3`, 1), "negative id"},
		{"absurd id", strings.Replace(good, `"a":3`, `"a":2000000000`, 1), "corrupt"},
		{"merge of an unknown piece", modified(func(d map[string]any) { model(d)["merges"] = [][2]string{{"a", "z"}} }), `"z" is not in the vocabulary`},
		{"merge result not in vocabulary", modified(func(d map[string]any) { model(d)["merges"] = [][2]string{{"b", "a"}} }), `merged piece "ba"`},
		{"malformed legacy merge", modified(func(d map[string]any) { model(d)["merges"] = []string{"a b c"} }), "one space"},
		{"merge with three pieces", modified(func(d map[string]any) { model(d)["merges"] = [][]string{{"a", "b", "c"}} }), "more than two"},
		{"merge that is a number", modified(func(d map[string]any) { model(d)["merges"] = []int{1} }), "neither a string nor a pair"},
		{"unknown unk token", modified(func(d map[string]any) { model(d)["unk_token"] = "<nope>" }), `unk_token "<nope>"`},
		{"dropout", modified(func(d map[string]any) { model(d)["dropout"] = 0.1 }), "dropout"},
		{"added token without id", modified(func(d map[string]any) { d["added_tokens"] = []any{map[string]any{"content": "<x>"}} }), "missing id"},
		{"added tokens not a list", modified(func(d map[string]any) { d["added_tokens"] = 5 }), "added_tokens"},
		{"unsupported normalizer", modified(func(d map[string]any) { d["normalizer"] = map[string]any{"type": "NFKC"} }), `unsupported normalizer type "NFKC"`},
		{"normalizer without type", modified(func(d map[string]any) { d["normalizer"] = map[string]any{"pattern": 1} }), `normalizer`},
		{"unsupported pre-tokenizer", modified(func(d map[string]any) { d["pre_tokenizer"] = map[string]any{"type": "ByteLevel"} }), `unsupported pre_tokenizer type "ByteLevel"`},
		{"unsupported split behavior", modified(func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Sideways"}
		}), `behavior "Sideways"`},
		{"unsupported regex", modified(func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\s+(?!\S)`}, "behavior": "Isolated"}
		}), "unsupported regex"},
		{"unsupported decoder", modified(func(d map[string]any) { d["decoder"] = map[string]any{"type": "WordPiece"} }), `unsupported decoder type "WordPiece"`},
		{"byte fallback after fuse", modified(func(d map[string]any) {
			d["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{map[string]any{"type": "Fuse"}, map[string]any{"type": "ByteFallback"}}}
		}), "ByteFallback after Fuse"},
		{"unsupported post-processor", modified(func(d map[string]any) { d["post_processor"] = map[string]any{"type": "BertProcessing"} }), `unsupported post_processor type "BertProcessing"`},
		{"template with an unknown special token", modified(func(d map[string]any) {
			d["post_processor"].(map[string]any)["special_tokens"] = map[string]any{}
		}), `special token "<s>"`},
		{"nesting too deep", strings.Replace(good, `"version":"1.0"`, `"version":`+strings.Repeat("[", 1000)+strings.Repeat("]", 1000), 1), "nesting"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tk, err := LoadJSON(strings.NewReader(tc.input))
			if err == nil {
				t.Fatalf("no error (got a tokenizer with %d ids)", tk.VocabSize())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestLoadGzipErrors(t *testing.T) {
	full, err := os.ReadFile(filepath.Join(testdataDir, "tokenizer", "gemma3-tokenizer.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	var corrupt []byte
	corrupt = append(corrupt, full[:1000]...)
	for i := 100; i < 1000; i++ {
		corrupt[i] ^= 0x5a
	}
	var tinyGz bytes.Buffer
	zw := gzip.NewWriter(&tinyGz)
	zw.Write([]byte(docJSON(t, tinyDoc())))
	zw.Close()
	badCRC := append([]byte(nil), tinyGz.Bytes()...)
	badCRC[len(badCRC)-5] ^= 0xff
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"truncated gzip", full[:len(full)/2], "unexpected EOF"},
		{"corrupt gzip", corrupt, "gzip"},
		{"bad gzip header", []byte{0x1f, 0x8b, 0, 0}, "gzip"},
		{"bad checksum", badCRC, "checksum"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadJSON(bytes.NewReader(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	// The same through Load, which names the file.
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.json.gz")
	if err := os.WriteFile(path, full[:len(full)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load(truncated) = %v, want an error naming the file", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.json")); err == nil || !os.IsNotExist(errorsUnwrapAll(err)) {
		t.Fatalf("Load(missing) = %v, want a not-exist error", err)
	}
	// A good gzip of a small document loads.
	if _, err := LoadJSON(bytes.NewReader(tinyGz.Bytes())); err != nil {
		t.Fatalf("small gzip: %v", err)
	}
}

func errorsUnwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
