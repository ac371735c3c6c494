package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEncodeDecode checks that Encode never panics, returns ids inside the
// vocabulary, and that decoding gives the text back: exactly for valid
// UTF-8 (up to the normalizer, which turns a literal "▁" into a space
// once decoded), and the U+FFFD-substituted text for invalid UTF-8. The
// stream decoder must agree with Decode.
func FuzzEncodeDecode(f *testing.F) {
	for _, g := range loadGoldenEncodings(f) {
		f.Add(g.Text)
	}
	for _, s := range []string{
		"\xff", "a\xc3", "\xe2\x82", "\xe2\x82a", "\xf0\x9f\x98", "\xed\xa0\x80", "\xc0\xaf", "ok\x80ok",
		"<start_of_turn", "<<bos>>", "<0xFF><0x41>", "▁▁▁ ▁", "\r\n\t \u00a0\u3000", strings.Repeat("ab", 300),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tk := gemma3(t)
		ids := tk.Encode(s, false)
		for _, id := range ids {
			if id < 0 || int(id) >= tk.VocabSize() {
				t.Fatalf("Encode(%q): id %d outside the vocabulary", s, id)
			}
		}
		want := strings.ReplaceAll(validUTF8(s), "▁", " ")
		got := tk.Decode(ids, false)
		if got != want {
			t.Fatalf("Decode(Encode(%q)) = %q, want %q (ids %v)", s, got, want, ids)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("Decode returned invalid UTF-8 %q", got)
		}
		if st := streamAll(t, tk, ids, false); st != got {
			t.Fatalf("stream %q != Decode %q (ids %v)", st, got, ids)
		}
		withBOS := tk.Encode(s, true)
		if len(withBOS) != len(ids)+1 || withBOS[0] != 2 {
			t.Fatalf("Encode(%q, true) = %v, want <bos> then %v", s, withBOS, ids)
		}
	})
}

func TestValidUTF8(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"\xff", "\uFFFD"},
		{"a\xe2\x82b", "a\uFFFDb"},             // truncated sequence: one U+FFFD
		{"\xe2\x82\xe2\x82\xac", "\uFFFD€"},    // then a valid one
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // surrogates: each byte
		{"\xc0\xaf", "\uFFFD\uFFFD"},           // overlong lead
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"\xf0\x9f\x98", "\uFFFD"},
		{"\xf0\x9f\x98\x80\x80", "😀\uFFFD"},
	}
	for _, tc := range tests {
		if got := validUTF8(tc.in); got != tc.want {
			t.Errorf("validUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
