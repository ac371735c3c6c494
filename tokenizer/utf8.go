package tokenizer

import "unicode/utf8"

// validUTF8 returns s with each maximal invalid UTF-8 subsequence replaced
// by U+FFFD, the "substitution of maximal subparts" of Unicode §3.9 that
// Python's bytes.decode("utf-8", "replace") and Rust's
// String::from_utf8_lossy implement. Valid input is returned as is.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	out := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		if r, n := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError || n > 1 {
			out = append(out, s[i:i+n]...)
			i += n
			continue
		}
		// Invalid: skip the lead byte and every continuation byte that could
		// still have been part of a valid sequence.
		i += maximalSubpart(s[i:])
		out = append(out, "\uFFFD"...)
	}
	return string(out)
}

// maximalSubpart returns the length (>= 1) of the invalid sequence at the
// start of s: a lead byte followed by the continuation bytes that are
// allowed after it, stopping at the first byte that is not.
func maximalSubpart(s string) int {
	c := s[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF) // range of the second byte
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default: // 0x80..0xC1, 0xF5..0xFF: never valid
		return 1
	}
	n := 1
	for k := 0; k < need && n < len(s); k++ {
		b := s[n]
		if k == 0 && (b < lo || b > hi) || k > 0 && (b < 0x80 || b > 0xBF) {
			break
		}
		n++
	}
	return n
}

// isValidUTF8 reports whether b is valid UTF-8.
func isValidUTF8(b []byte) bool { return utf8.Valid(b) }
