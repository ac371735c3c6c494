package tokenizer

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner is a small hand-rolled JSON reader over an in-memory document.
//
// tokenizer.json is dominated by two sections, model.vocab (262k string→int
// pairs) and model.merges (515k pairs of strings). Decoding those through
// encoding/json into maps and slices of strings allocates millions of
// objects; this scanner walks the document once, unescapes strings into a
// single arena and hands out byte offsets, and leaves the small sections
// (added_tokens, normalizer, decoder, ...) to encoding/json as raw spans.
type scanner struct {
	data []byte
	pos  int
}

// maxDepth bounds the nesting that skipValue accepts, so a hostile file
// cannot exhaust the stack.
const maxDepth = 512

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("tokenizer.json: offset %d: %s", s.pos, fmt.Sprintf(format, args...))
}

func (s *scanner) skipWS() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it (0 at the end).
func (s *scanner) peek() byte {
	s.skipWS()
	if s.pos >= len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

func (s *scanner) expect(c byte) error {
	s.skipWS()
	if s.pos >= len(s.data) {
		return s.errorf("unexpected end of input, want %q", c)
	}
	if s.data[s.pos] != c {
		return s.errorf("unexpected %q, want %q", s.data[s.pos], c)
	}
	s.pos++
	return nil
}

// literal consumes the literal word (true, false, null).
func (s *scanner) literal(word string) error {
	if !bytes.HasPrefix(s.data[s.pos:], []byte(word)) {
		if s.pos >= len(s.data) {
			return s.errorf("unexpected end of input")
		}
		return s.errorf("invalid character %q", s.data[s.pos])
	}
	s.pos += len(word)
	return nil
}

// appendString reads a JSON string at the current position and appends its
// unescaped bytes to dst.
func (s *scanner) appendString(dst []byte) ([]byte, error) {
	if err := s.expect('"'); err != nil {
		return dst, err
	}
	for {
		rest := s.data[s.pos:]
		q := bytes.IndexByte(rest, '"')
		if q < 0 {
			s.pos = len(s.data)
			return dst, s.errorf("unexpected end of input in string")
		}
		bs := bytes.IndexByte(rest[:q], '\\')
		if bs < 0 {
			dst = append(dst, rest[:q]...)
			s.pos += q + 1
			return dst, nil
		}
		dst = append(dst, rest[:bs]...)
		s.pos += bs + 1
		if s.pos >= len(s.data) {
			return dst, s.errorf("unexpected end of input in string escape")
		}
		c := s.data[s.pos]
		s.pos++
		switch c {
		case '"', '\\', '/':
			dst = append(dst, c)
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, err := s.hex4()
			if err != nil {
				return dst, err
			}
			if utf16.IsSurrogate(r) {
				// A high surrogate must be followed by \u and a low surrogate;
				// anything else decodes to U+FFFD, as encoding/json does.
				r2 := utf8.RuneError
				if bytes.HasPrefix(s.data[s.pos:], []byte(`\u`)) {
					save := s.pos
					s.pos += 2
					lo, err := s.hex4()
					if err != nil {
						return dst, err
					}
					if dec := utf16.DecodeRune(r, lo); dec != utf8.RuneError {
						r2 = dec
					} else {
						s.pos = save
					}
				}
				r = r2
			}
			dst = utf8.AppendRune(dst, r)
		default:
			s.pos--
			return dst, s.errorf("invalid escape \\%c in string", c)
		}
	}
}

func (s *scanner) hex4() (rune, error) {
	if s.pos+4 > len(s.data) {
		return 0, s.errorf("unexpected end of input in \\u escape")
	}
	v, err := strconv.ParseUint(string(s.data[s.pos:s.pos+4]), 16, 32)
	if err != nil {
		return 0, s.errorf("invalid \\u escape %q", s.data[s.pos:s.pos+4])
	}
	s.pos += 4
	return rune(v), nil
}

// str reads a JSON string into a new Go string.
func (s *scanner) str() (string, error) {
	b, err := s.appendString(nil)
	return string(b), err
}

// int reads a JSON number that must be an integer fitting in int32.
func (s *scanner) int() (int32, error) {
	s.skipWS()
	start := s.pos
	if s.pos < len(s.data) && s.data[s.pos] == '-' {
		s.pos++
	}
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	if s.pos < len(s.data) {
		switch s.data[s.pos] {
		case '.', 'e', 'E':
			return 0, s.errorf("expected an integer id")
		}
	}
	v, err := strconv.ParseInt(string(s.data[start:s.pos]), 10, 32)
	if err != nil {
		s.pos = start
		return 0, s.errorf("expected an integer id")
	}
	return int32(v), nil
}

// object iterates over the members of a JSON object, calling member with
// each key; member must consume the value.
func (s *scanner) object(member func(key string) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	for {
		key, err := s.str()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := member(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		case 0:
			return s.errorf("unexpected end of input in object")
		default:
			return s.errorf("unexpected %q in object, want ',' or '}'", s.data[s.pos])
		}
	}
}

// array iterates over the elements of a JSON array; elem must consume the
// value.
func (s *scanner) array(elem func(i int) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for i := 0; ; i++ {
		if err := elem(i); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		case 0:
			return s.errorf("unexpected end of input in array")
		default:
			return s.errorf("unexpected %q in array, want ',' or ']'", s.data[s.pos])
		}
	}
}

// raw skips one value and returns its bytes (for encoding/json).
func (s *scanner) raw() ([]byte, error) {
	s.skipWS()
	start := s.pos
	if err := s.skip(0); err != nil {
		return nil, err
	}
	return s.data[start:s.pos], nil
}

// skip consumes one JSON value.
func (s *scanner) skip(depth int) error {
	if depth > maxDepth {
		return s.errorf("nesting deeper than %d", maxDepth)
	}
	switch c := s.peek(); c {
	case 0:
		return s.errorf("unexpected end of input, want a value")
	case '{':
		return s.object(func(string) error { return s.skip(depth + 1) })
	case '[':
		return s.array(func(int) error { return s.skip(depth + 1) })
	case '"':
		_, err := s.appendString(nil)
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			start := s.pos
			s.pos++
			for s.pos < len(s.data) {
				switch d := s.data[s.pos]; {
				case d >= '0' && d <= '9', d == '.', d == 'e', d == 'E', d == '+', d == '-':
					s.pos++
					continue
				}
				break
			}
			if _, err := strconv.ParseFloat(string(s.data[start:s.pos]), 64); err != nil {
				s.pos = start
				return s.errorf("invalid number")
			}
			return nil
		}
		return s.errorf("invalid character %q, want a value", c)
	}
}
