package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// value is a JSON value that keeps the order of object keys, with the
// Python semantics the Jinja templates see (truthiness, str(), dictsort).
type value struct {
	kind kind
	b    bool
	s    string // string, or the literal of a number
	arr  []value
	keys []string
	vals []value
}

type kind uint8

const (
	kUndefined kind = iota
	kNull
	kBool
	kNumber
	kString
	kArray
	kObject
)

// parseValue decodes raw JSON; empty input is undefined.
func parseValue(raw json.RawMessage) (value, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return value{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return value{}, err
	}
	if _, err := dec.Token(); err == nil {
		return value{}, errors.New("unexpected data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (value, error) {
	if depth > 256 {
		return value{}, errors.New("JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return value{}, err
	}
	switch t := tok.(type) {
	case nil:
		return value{kind: kNull}, nil
	case bool:
		return value{kind: kBool, b: t}, nil
	case json.Number:
		return value{kind: kNumber, s: string(t)}, nil
	case string:
		return value{kind: kString, s: t}, nil
	case json.Delim:
		switch t {
		case '[':
			v := value{kind: kArray, arr: []value{}}
			for dec.More() {
				e, err := decodeValue(dec, depth+1)
				if err != nil {
					return value{}, err
				}
				v.arr = append(v.arr, e)
			}
			_, err := dec.Token()
			return v, err
		case '{':
			v := value{kind: kObject}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return value{}, err
				}
				k, _ := kt.(string)
				e, err := decodeValue(dec, depth+1)
				if err != nil {
					return value{}, err
				}
				// A repeated key keeps its first position and the last
				// value, like a Python dict.
				if i := v.index(k); i >= 0 {
					v.vals[i] = e
					continue
				}
				v.keys = append(v.keys, k)
				v.vals = append(v.vals, e)
			}
			_, err := dec.Token()
			return v, err
		}
	}
	return value{}, fmt.Errorf("unexpected JSON token %v", tok)
}

func (v value) index(key string) int {
	for i, k := range v.keys {
		if k == key {
			return i
		}
	}
	return -1
}

// get is v[key]: undefined unless v is an object with that key.
func (v value) get(key string) value {
	if v.kind != kObject {
		return value{}
	}
	if i := v.index(key); i >= 0 {
		return v.vals[i]
	}
	return value{}
}

func (v value) defined() bool { return v.kind != kUndefined }

// truthy is Python's bool(v).
func (v value) truthy() bool {
	switch v.kind {
	case kBool:
		return v.b
	case kNumber:
		f, err := strconv.ParseFloat(v.s, 64)
		return err != nil || f != 0
	case kString:
		return v.s != ""
	case kArray:
		return len(v.arr) > 0
	case kObject:
		return len(v.keys) > 0
	}
	return false
}

// dictsort returns the key order of Jinja's dictsort filter: sorted by the
// lower-cased key, ties in insertion order.
func (v value) dictsort() []int {
	idx := make([]int, len(v.keys))
	lower := make([]string, len(v.keys))
	for i, k := range v.keys {
		idx[i] = i
		lower[i] = strings.ToLower(k)
	}
	sort.SliceStable(idx, func(a, b int) bool { return lower[idx[a]] < lower[idx[b]] })
	return idx
}

// str is what Jinja prints for {{ v }}: Python's str(v), "" if undefined.
func (v value) str() string {
	switch v.kind {
	case kUndefined:
		return ""
	case kString:
		return v.s
	}
	var b strings.Builder
	v.repr(&b)
	return b.String()
}

// repr writes Python's repr(v).
func (v value) repr(b *strings.Builder) {
	switch v.kind {
	case kUndefined:
	case kNull:
		b.WriteString("None")
	case kBool:
		if v.b {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case kNumber:
		b.WriteString(pyNumber(v.s))
	case kString:
		pyReprString(b, v.s)
	case kArray:
		b.WriteByte('[')
		for i, e := range v.arr {
			if i > 0 {
				b.WriteString(", ")
			}
			e.repr(b)
		}
		b.WriteByte(']')
	case kObject:
		b.WriteByte('{')
		for i, k := range v.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			pyReprString(b, k)
			b.WriteString(": ")
			v.vals[i].repr(b)
		}
		b.WriteByte('}')
	}
}

// pyNumber formats a JSON number literal as Python prints the int or float
// that json.loads makes of it.
func pyNumber(lit string) string {
	if !strings.ContainsAny(lit, ".eE") {
		if lit == "-0" {
			return "0"
		}
		return lit
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		if math.IsInf(f, 0) {
			if f > 0 {
				return "inf"
			}
			return "-inf"
		}
		return lit
	}
	return pyFloat(f)
}

// pyFloat is Python's repr(float): the shortest round-tripping digits, in
// fixed notation when the decimal exponent is in [-4, 16), else scientific
// with at least two exponent digits.
func pyFloat(f float64) string {
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, exp, _ := strings.Cut(e, "e")
	x, _ := strconv.Atoi(exp)
	if x >= -4 && x < 16 {
		s := strconv.FormatFloat(f, 'f', -1, 64)
		if !strings.Contains(s, ".") {
			s += ".0"
		}
		return s
	}
	sign := "+"
	if x < 0 {
		sign, x = "-", -x
	}
	return fmt.Sprintf("%se%s%02d", mant, sign, x)
}

// pyReprString writes Python's repr of a str.
func pyReprString(b *strings.Builder, s string) {
	q := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		q = '"'
	}
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == rune(q):
			b.WriteByte('\\')
			b.WriteByte(q)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case !strconv.IsPrint(r):
			switch {
			case r < 0x100:
				fmt.Fprintf(b, `\x%02x`, r)
			case r < 0x10000:
				fmt.Fprintf(b, `\u%04x`, r)
			default:
				fmt.Fprintf(b, `\U%08x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
}

// pyStrip is Python's str.strip(): it removes the characters for which
// str.isspace() is true from both ends.
func pyStrip(s string) string {
	return strings.TrimFunc(s, pyIsSpace)
}

func pyIsSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0,
		0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}
