package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// streamAll feeds ids one at a time and returns the concatenated output,
// checking that every piece of output is valid UTF-8.
func streamAll(tb testing.TB, tk *Tokenizer, ids []int32, skipSpecial bool) string {
	tb.Helper()
	d := tk.NewStreamDecoder(skipSpecial)
	var b strings.Builder
	for _, id := range ids {
		s := d.Add(id)
		if !utf8.ValidString(s) {
			tb.Fatalf("Add(%d) returned invalid UTF-8 %q", id, s)
		}
		b.WriteString(s)
	}
	b.WriteString(d.Flush())
	return b.String()
}

// TestStreamGolden compares the stream with the goldens' decodes.
func TestStreamGolden(t *testing.T) {
	tk := gemma3(t)
	for _, g := range loadGoldenEncodings(t) {
		if got := streamAll(t, tk, g.IDs, false); got != g.Decoded {
			t.Errorf("stream(%v) = %q, want %q", g.IDs, got, g.Decoded)
		}
		if got := streamAll(t, tk, g.IDs, true); got != g.DecodedSkipSpecial {
			t.Errorf("stream(%v, skip) = %q, want %q", g.IDs, got, g.DecodedSkipSpecial)
		}
	}
}

// TestStreamEmitsWholeCharacters checks that a character spelled with
// byte-fallback pieces comes out as soon as its last byte arrives, and not
// before.
func TestStreamEmitsWholeCharacters(t *testing.T) {
	tk := gemma3(t)
	ids := tk.Encode("a😀b", false)
	var bytesIDs []int32
	for _, id := range ids {
		if _, ok := byteToken(tk.Piece(id)); ok {
			bytesIDs = append(bytesIDs, id)
		}
	}
	if len(bytesIDs) != 0 && len(bytesIDs) != 4 {
		t.Fatalf("unexpected encoding %v", ids)
	}
	// Spell the emoji with its four byte pieces whatever the vocabulary has.
	var spelled []int32
	for _, c := range []byte("😀") {
		id, ok := tk.TokenID("<0x" + hex2(c) + ">")
		if !ok {
			t.Fatalf("no byte piece for %02X", c)
		}
		spelled = append(spelled, id)
	}
	d := tk.NewStreamDecoder(false)
	for i, id := range spelled {
		got := d.Add(id)
		switch {
		case i < 3 && got != "":
			t.Fatalf("byte %d: emitted %q before the character was complete", i, got)
		case i == 3 && got != "😀":
			t.Fatalf("last byte: emitted %q, want the emoji", got)
		}
	}
	if rest := d.Flush(); rest != "" {
		t.Errorf("Flush = %q, want nothing", rest)
	}
	// An unfinished character is released by Flush as U+FFFD per byte.
	d.Add(spelled[0])
	d.Add(spelled[1])
	if rest := d.Flush(); rest != "\uFFFD\uFFFD" {
		t.Errorf("Flush after two bytes = %q", rest)
	}
}

func hex2(c byte) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{digits[c>>4], digits[c&15]})
}

// TestStreamRandom compares the stream with Decode on random id sequences
// drawn from the real vocabulary, biased towards byte pieces.
func TestStreamRandom(t *testing.T) {
	tk := gemma3(t)
	var byteIDs []int32
	for i := 0; i < 256; i++ {
		id, _ := tk.TokenID("<0x" + hex2(byte(i)) + ">")
		byteIDs = append(byteIDs, id)
	}
	r := rand.New(rand.NewPCG(1, 2))
	text := []byte("héllo wörld 😀 日本 ")
	for n := 0; n < 2000; n++ {
		var ids []int32
		for k := r.IntN(12); k >= 0; k-- {
			switch r.IntN(3) {
			case 0:
				ids = append(ids, int32(r.IntN(tk.VocabSize())))
			case 1:
				// Bytes of valid UTF-8 text, so that runs are often valid.
				start := r.IntN(len(text))
				for _, c := range text[start:min(len(text), start+1+r.IntN(6))] {
					ids = append(ids, byteIDs[c])
				}
			default:
				ids = append(ids, byteIDs[r.IntN(256)])
			}
		}
		want := tk.Decode(ids, false)
		got := streamAll(t, tk, ids, false)
		if got != want && !hasValidPrefixBeforeInvalid(tk, ids) {
			t.Fatalf("ids %v: stream %q, Decode %q", ids, got, want)
		}
	}
}

// hasValidPrefixBeforeInvalid reports whether some run of byte pieces in
// ids holds a complete character followed by an invalid byte: the one case
// where the stream (which has already released the character) and Decode
// (which replaces the whole run) differ, as documented.
func hasValidPrefixBeforeInvalid(tk *Tokenizer, ids []int32) bool {
	var run []byte
	check := func() bool {
		if len(run) == 0 || utf8.Valid(run) {
			return false
		}
		for i := 1; i < len(run); i++ {
			if utf8.Valid(run[:i]) && utf8.FullRune(run[:i]) {
				r, n := utf8.DecodeRune(run)
				if r != utf8.RuneError && n <= i {
					return true
				}
			}
		}
		return false
	}
	for _, id := range ids {
		if b, ok := byteToken(tk.Piece(id)); ok {
			run = append(run, b)
			continue
		}
		if check() {
			return true
		}
		run = run[:0]
	}
	return check()
}

// TestStreamInvalidAfterValid pins the documented difference.
func TestStreamInvalidAfterValid(t *testing.T) {
	tk := gemma3(t)
	a, _ := tk.TokenID("<0x41>")
	ff, _ := tk.TokenID("<0xFF>")
	ids := []int32{a, ff}
	if got := tk.Decode(ids, false); got != "\uFFFD\uFFFD" {
		t.Errorf("Decode = %q, want two U+FFFD (Hugging Face replaces the whole run)", got)
	}
	if got := streamAll(t, tk, ids, false); got != "A\uFFFD" {
		t.Errorf("stream = %q, want %q", got, "A\uFFFD")
	}
}

func TestStreamReset(t *testing.T) {
	tk := gemma3(t)
	d := tk.NewStreamDecoder(true)
	e0, _ := tk.TokenID("<0xE2>")
	d.Add(e0)
	d.Reset()
	ids := tk.Encode("fresh start", true)
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(d.Add(id))
	}
	b.WriteString(d.Flush())
	if b.String() != "fresh start" {
		t.Errorf("after Reset got %q", b.String())
	}
}
