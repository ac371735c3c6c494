package tokenizer

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
)

// tinyDoc returns a small tokenizer.json document as a map, to be modified
// by a test and serialized with docJSON. Its vocabulary: the characters a,
// b, c, _, space, the merges a+b, ab+c, and the bytes 0xC3 and 0xA9 ("é").
func tinyDoc() map[string]any {
	return map[string]any{
		"version": "1.0",
		"added_tokens": []any{
			map[string]any{"id": 0, "content": "<unk>", "special": true, "normalized": false},
			map[string]any{"id": 1, "content": "<s>", "special": true, "normalized": false},
			map[string]any{"id": 2, "content": "</s>", "special": true, "normalized": false},
		},
		"normalizer":    nil,
		"pre_tokenizer": nil,
		"post_processor": map[string]any{
			"type": "TemplateProcessing",
			"single": []any{
				map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}},
				map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}},
			},
			"special_tokens": map[string]any{
				"<s>":  map[string]any{"id": "<s>", "ids": []int{1}, "tokens": []string{"<s>"}},
				"</s>": map[string]any{"id": "</s>", "ids": []int{2}, "tokens": []string{"</s>"}},
			},
		},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
		}},
		"model": map[string]any{
			"type":          "BPE",
			"unk_token":     "<unk>",
			"fuse_unk":      true,
			"byte_fallback": true,
			"vocab": map[string]int{
				"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "c": 5, "ab": 6, "abc": 7,
				"<0xC3>": 8, "<0xA9>": 9, " ": 10, "_": 11,
			},
			"merges": [][2]string{{"a", "b"}, {"ab", "c"}},
		},
	}
}

func docJSON(t testing.TB, doc map[string]any) string {
	t.Helper()
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func loadDoc(t testing.TB, doc map[string]any) *Tokenizer {
	t.Helper()
	tk, err := LoadJSON(strings.NewReader(docJSON(t, doc)))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func model(doc map[string]any) map[string]any { return doc["model"].(map[string]any) }

func TestSyntheticBPE(t *testing.T) {
	tests := []struct {
		name       string
		modify     func(doc map[string]any)
		text       string
		addSpecial bool
		want       []int32
	}{
		{"merges", nil, "abcab", false, []int32{7, 6}},
		{"post-processor prefix and suffix", nil, "ab", true, []int32{1, 6, 2}},
		{"legacy merge strings", func(d map[string]any) { model(d)["merges"] = []string{"#version: 0.2", "a b", "ab c"} }, "abcab", false, []int32{7, 6}},
		{"byte fallback", nil, "aé", false, []int32{3, 8, 9}},
		{"unknown characters fuse into one <unk>", nil, "a€€b", false, []int32{3, 0, 4}},
		{"unknown characters without fuse_unk", func(d map[string]any) { model(d)["fuse_unk"] = false }, "a€€b", false, []int32{3, 0, 0, 4}},
		{"no byte fallback", func(d map[string]any) { model(d)["byte_fallback"] = false }, "é", false, []int32{0}},
		{"ignore_merges keeps whole-word pieces", func(d map[string]any) {
			model(d)["ignore_merges"] = true
			model(d)["merges"] = [][2]string{}
		}, "abc", false, []int32{7}},
		{"added tokens are found in the text", nil, "a</s>b<s>", false, []int32{3, 2, 4, 1}},
		{"lstrip and rstrip take the spaces around", func(d map[string]any) {
			d["added_tokens"] = append(d["added_tokens"].([]any), map[string]any{"id": 11, "content": "_", "lstrip": true, "rstrip": true, "normalized": false})
		}, "a  _  b", false, []int32{3, 11, 4}},
		{"single_word needs word boundaries", func(d map[string]any) {
			d["added_tokens"] = append(d["added_tokens"].([]any), map[string]any{"id": 7, "content": "abc", "single_word": true, "normalized": false})
			model(d)["merges"] = [][2]string{}
		}, "abc abc_", false, []int32{7, 10, 3, 4, 5, 11}},
		{"normalized added tokens match the normalized text", func(d map[string]any) {
			d["normalizer"] = map[string]any{"type": "Lowercase"}
			d["added_tokens"] = append(d["added_tokens"].([]any), map[string]any{"id": 11, "content": "X", "normalized": true})
		}, "AXB", false, []int32{3, 11, 4}},
		{"prepend and replace normalizers", func(d map[string]any) {
			d["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{
				map[string]any{"type": "Prepend", "prepend": "a"},
				map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": "[0-9]"}, "content": "c"},
			}}
		}, "b1", false, []int32{7}},
		{"split pre-tokenizer keeps merges inside words", func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Isolated", "invert": false}
		}, "ab c", false, []int32{6, 10, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := tinyDoc()
			if tc.modify != nil {
				tc.modify(doc)
			}
			tk := loadDoc(t, doc)
			if got := tk.Encode(tc.text, tc.addSpecial); !slices.Equal(got, tc.want) {
				t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
		})
	}
}

// TestSplitBehaviors uses the example of Hugging Face's
// SplitDelimiterBehavior documentation.
func TestSplitBehaviors(t *testing.T) {
	want := map[splitBehavior][]string{
		splitRemoved:            {"the", "final", "countdown"},
		splitIsolated:           {"the", "-", "final", "-", "-", "countdown"},
		splitMergedWithPrevious: {"the-", "final-", "-", "countdown"},
		splitMergedWithNext:     {"the", "-final", "-", "-countdown"},
		splitContiguous:         {"the", "-", "final", "--", "countdown"},
	}
	for _, b := range slices.Sorted(maps.Keys(want)) {
		p := preSplit{pat: pattern{lit: "-"}, behavior: b}
		if got := p.split("the-final--countdown", nil); !slices.Equal(got, want[b]) {
			t.Errorf("behavior %d: got %q, want %q", b, got, want[b])
		}
	}
	for _, b := range slices.Sorted(maps.Keys(want)) {
		for _, inverted := range []bool{false, true} {
			p := preSplit{pat: pattern{lit: "-"}, behavior: b, invert: inverted}
			got := p.split("countdown", nil)
			if inverted && b == splitRemoved {
				if len(got) != 0 {
					t.Errorf("inverted Removed without delimiter: got %q", got)
				}
			} else if !slices.Equal(got, []string{"countdown"}) {
				t.Errorf("behavior %d (inverted %v) without delimiter: got %q", b, inverted, got)
			}
			if got := p.split("", nil); len(got) != 0 {
				t.Errorf("behavior %d: empty input gave %q", b, got)
			}
		}
	}
	inv := preSplit{pat: pattern{lit: "-"}, behavior: splitRemoved, invert: true}
	if got := inv.split("the-final--countdown", nil); !slices.Equal(got, []string{"-", "-", "-"}) {
		t.Errorf("inverted Removed: got %q", got)
	}
}

func TestSyntheticDecode(t *testing.T) {
	doc := tinyDoc()
	doc["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{
		map[string]any{"type": "Replace", "pattern": map[string]any{"String": "_"}, "content": " "},
		map[string]any{"type": "ByteFallback"},
		map[string]any{"type": "Fuse"},
		map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 1},
	}}
	tk := loadDoc(t, doc)
	tests := []struct {
		ids  []int32
		want string
	}{
		{[]int32{11, 3, 8, 9, 11, 11}, "aé "},    // Strip one leading and one trailing space
		{[]int32{8, 3}, "\uFFFDa"},               // an incomplete byte run
		{[]int32{9, 8}, "\uFFFD\uFFFD"},          // invalid run: one U+FFFD per byte
		{[]int32{1, 6, 2, 99, -1}, "<s>ab</s>"},  // unknown ids are skipped
		{[]int32{11, 11, 11, 4, 11, 11}, "  b "}, // at most one stripped at each end
		{[]int32{3, 9, 9, 8, 9, 8}, "a\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD"},
	}
	for _, tc := range tests {
		if got := tk.Decode(tc.ids, false); got != tc.want {
			t.Errorf("Decode(%v) = %q, want %q", tc.ids, got, tc.want)
		}
		if got := streamAll(t, tk, tc.ids, false); got != tc.want {
			t.Errorf("stream %v = %q, want %q", tc.ids, got, tc.want)
		}
	}
	if got := tk.Decode([]int32{1, 6, 2}, true); got != "ab" {
		t.Errorf("Decode skipping specials = %q", got)
	}
}

func TestNoDecoderJoinsWithSpaces(t *testing.T) {
	doc := tinyDoc()
	doc["decoder"] = nil
	tk := loadDoc(t, doc)
	ids := []int32{1, 3, 6, 2}
	if got := tk.Decode(ids, true); got != "a ab" {
		t.Errorf("Decode = %q, want %q", got, "a ab")
	}
	if got := streamAll(t, tk, ids, true); got != "a ab" {
		t.Errorf("stream = %q, want %q", got, "a ab")
	}
}
