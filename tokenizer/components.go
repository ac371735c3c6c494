package tokenizer

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// componentJSON is the union of the fields of the supported normalizer,
// pre-tokenizer, decoder and post-processor objects.
type componentJSON struct {
	Type          string            `json:"type"`
	Pattern       *patternJSON      `json:"pattern"`
	Content       *string           `json:"content"`
	Prepend       *string           `json:"prepend"`
	Behavior      string            `json:"behavior"`
	Invert        bool              `json:"invert"`
	Normalizers   []json.RawMessage `json:"normalizers"`
	PreTokenizers []json.RawMessage `json:"pretokenizers"`
	Decoders      []json.RawMessage `json:"decoders"`
	Start         int               `json:"start"`
	Stop          int               `json:"stop"`
	StripLeft     *bool             `json:"strip_left"`
	StripRight    *bool             `json:"strip_right"`
	Single        []templatePiece   `json:"single"`
	SpecialTokens map[string]struct {
		ID  string  `json:"id"`
		IDs []int32 `json:"ids"`
	} `json:"special_tokens"`
}

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type templatePiece struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

// isNull reports whether a raw component is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

func decodeComponent(kind string, raw json.RawMessage) (*componentJSON, error) {
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	if c.Type == "" {
		return nil, fmt.Errorf(`%s: missing "type"`, kind)
	}
	return &c, nil
}

// pattern is a literal string or a regular expression.
type pattern struct {
	lit string
	re  *regexp.Regexp
}

func compilePattern(kind string, p *patternJSON) (pattern, error) {
	switch {
	case p == nil:
		return pattern{}, fmt.Errorf(`%s: missing "pattern"`, kind)
	case p.String != nil:
		if *p.String == "" {
			return pattern{}, fmt.Errorf("%s: empty pattern", kind)
		}
		return pattern{lit: *p.String}, nil
	case p.Regex != nil:
		// Hugging Face uses Oniguruma; RE2 covers the common subset
		// (no look-around or backreferences).
		re, err := regexp.Compile(*p.Regex)
		if err != nil {
			return pattern{}, fmt.Errorf("%s: unsupported regex %q: %w", kind, *p.Regex, err)
		}
		return pattern{re: re}, nil
	}
	return pattern{}, fmt.Errorf(`%s: pattern needs "String" or "Regex"`, kind)
}

func (p pattern) replaceAll(s, with string) string {
	if p.re != nil {
		return p.re.ReplaceAllLiteralString(s, with)
	}
	return strings.ReplaceAll(s, p.lit, with)
}

// find returns the [start, end) byte ranges of the non-empty matches.
func (p pattern) find(s string) [][2]int {
	var out [][2]int
	if p.re != nil {
		for _, m := range p.re.FindAllStringIndex(s, -1) {
			if m[1] > m[0] {
				out = append(out, [2]int{m[0], m[1]})
			}
		}
		return out
	}
	for off := 0; ; {
		i := strings.Index(s[off:], p.lit)
		if i < 0 {
			return out
		}
		out = append(out, [2]int{off + i, off + i + len(p.lit)})
		off += i + len(p.lit)
	}
}

// ---- normalizers ----

// normStep is one normalizer operation.
type normStep struct {
	kind             normKind
	pat              pattern
	content          string
	stripL, stripRgt bool
}

type normKind uint8

const (
	normReplace normKind = iota
	normPrepend
	normLowercase
	normStrip
)

func buildNormalizer(raw json.RawMessage, out []normStep) ([]normStep, error) {
	if isNull(raw) {
		return out, nil
	}
	c, err := decodeComponent("normalizer", raw)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		for _, sub := range c.Normalizers {
			if out, err = buildNormalizer(sub, out); err != nil {
				return nil, err
			}
		}
		return out, nil
	case "Replace":
		p, err := compilePattern("normalizer Replace", c.Pattern)
		if err != nil {
			return nil, err
		}
		if c.Content == nil {
			return nil, fmt.Errorf(`normalizer Replace: missing "content"`)
		}
		return append(out, normStep{kind: normReplace, pat: p, content: *c.Content}), nil
	case "Prepend":
		if c.Prepend == nil {
			return nil, fmt.Errorf(`normalizer Prepend: missing "prepend"`)
		}
		return append(out, normStep{kind: normPrepend, content: *c.Prepend}), nil
	case "Lowercase":
		return append(out, normStep{kind: normLowercase}), nil
	case "Strip":
		l, r := true, true
		if c.StripLeft != nil {
			l = *c.StripLeft
		}
		if c.StripRight != nil {
			r = *c.StripRight
		}
		return append(out, normStep{kind: normStrip, stripL: l, stripRgt: r}), nil
	}
	return nil, fmt.Errorf("unsupported normalizer type %q (supported: Sequence, Replace, Prepend, Lowercase, Strip)", c.Type)
}

func normalize(steps []normStep, s string) string {
	for i := range steps {
		st := &steps[i]
		switch st.kind {
		case normReplace:
			s = st.pat.replaceAll(s, st.content)
		case normPrepend:
			if s != "" {
				s = st.content + s
			}
		case normLowercase:
			s = strings.ToLower(s)
		case normStrip:
			if st.stripL {
				s = strings.TrimLeftFunc(s, unicode.IsSpace)
			}
			if st.stripRgt {
				s = strings.TrimRightFunc(s, unicode.IsSpace)
			}
		}
	}
	return s
}

// ---- pre-tokenizers ----

type splitBehavior uint8

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

// preSplit is a Split pre-tokenizer.
type preSplit struct {
	pat      pattern
	behavior splitBehavior
	invert   bool
}

func buildPreTokenizer(raw json.RawMessage, out []preSplit) ([]preSplit, error) {
	if isNull(raw) {
		return out, nil
	}
	c, err := decodeComponent("pre_tokenizer", raw)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		for _, sub := range c.PreTokenizers {
			if out, err = buildPreTokenizer(sub, out); err != nil {
				return nil, err
			}
		}
		return out, nil
	case "Split":
		p, err := compilePattern("pre_tokenizer Split", c.Pattern)
		if err != nil {
			return nil, err
		}
		var b splitBehavior
		switch c.Behavior {
		case "Removed":
			b = splitRemoved
		case "Isolated":
			b = splitIsolated
		case "MergedWithPrevious":
			b = splitMergedWithPrevious
		case "MergedWithNext":
			b = splitMergedWithNext
		case "Contiguous":
			b = splitContiguous
		default:
			return nil, fmt.Errorf("pre_tokenizer Split: unsupported behavior %q", c.Behavior)
		}
		return append(out, preSplit{pat: p, behavior: b, invert: c.Invert}), nil
	}
	return nil, fmt.Errorf("unsupported pre_tokenizer type %q (supported: Sequence, Split)", c.Type)
}

// split appends the non-empty pieces of s to out, following the Hugging
// Face SplitDelimiterBehavior rules.
func (p *preSplit) split(s string, out []string) []string {
	type seg struct {
		a, b  int
		match bool
	}
	matches := p.pat.find(s)
	if len(matches) == 0 {
		// No delimiter: one piece, unless an inverted pattern removes it.
		if s == "" || p.invert && p.behavior == splitRemoved {
			return out
		}
		return append(out, s)
	}
	var segs []seg
	prev := 0
	for _, m := range matches {
		if m[0] > prev {
			segs = append(segs, seg{prev, m[0], false})
		}
		segs = append(segs, seg{m[0], m[1], true})
		prev = m[1]
	}
	if prev < len(s) {
		segs = append(segs, seg{prev, len(s), false})
	}
	if p.invert {
		for i := range segs {
			segs[i].match = !segs[i].match
		}
	}
	var res []seg
	switch p.behavior {
	case splitRemoved:
		for _, g := range segs {
			if !g.match {
				res = append(res, g)
			}
		}
	case splitIsolated:
		res = segs
	case splitMergedWithPrevious:
		prevMatch := false
		for _, g := range segs {
			if g.match && !prevMatch && len(res) > 0 {
				res[len(res)-1].b = g.b
			} else {
				res = append(res, g)
			}
			prevMatch = g.match
		}
	case splitMergedWithNext:
		prevMatch := false
		for i := len(segs) - 1; i >= 0; i-- {
			g := segs[i]
			if g.match && !prevMatch && len(res) > 0 {
				res[len(res)-1].a = g.a
			} else {
				res = append(res, g)
			}
			prevMatch = g.match
		}
		for i, j := 0, len(res)-1; i < j; i, j = i+1, j-1 {
			res[i], res[j] = res[j], res[i]
		}
	case splitContiguous:
		prevMatch := false
		for i, g := range segs {
			if i > 0 && g.match == prevMatch {
				res[len(res)-1].b = g.b
			} else {
				res = append(res, g)
			}
			prevMatch = g.match
		}
	}
	for _, g := range res {
		if g.b > g.a {
			out = append(out, s[g.a:g.b])
		}
	}
	return out
}

// ---- decoders ----

type decKind uint8

const (
	decReplace decKind = iota
	decByteFallback
	decFuse
	decStrip
)

// decStep is one decoder operation.
type decStep struct {
	kind        decKind
	pat         pattern
	content     string
	stripChar   rune
	start, stop int
}

func buildDecoder(raw json.RawMessage, out []decStep) ([]decStep, error) {
	if isNull(raw) {
		return out, nil
	}
	c, err := decodeComponent("decoder", raw)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		for _, sub := range c.Decoders {
			if out, err = buildDecoder(sub, out); err != nil {
				return nil, err
			}
		}
		return out, nil
	case "Replace":
		p, err := compilePattern("decoder Replace", c.Pattern)
		if err != nil {
			return nil, err
		}
		if c.Content == nil {
			return nil, fmt.Errorf(`decoder Replace: missing "content"`)
		}
		return append(out, decStep{kind: decReplace, pat: p, content: *c.Content}), nil
	case "ByteFallback":
		return append(out, decStep{kind: decByteFallback}), nil
	case "Fuse":
		return append(out, decStep{kind: decFuse}), nil
	case "Strip":
		if c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return nil, fmt.Errorf(`decoder Strip: "content" must be one character`)
		}
		if c.Start < 0 || c.Stop < 0 {
			return nil, fmt.Errorf("decoder Strip: negative start or stop")
		}
		r, _ := utf8.DecodeRuneInString(*c.Content)
		return append(out, decStep{kind: decStrip, stripChar: r, start: c.Start, stop: c.Stop}), nil
	}
	return nil, fmt.Errorf("unsupported decoder type %q (supported: Sequence, Replace, ByteFallback, Fuse, Strip)", c.Type)
}

// strip applies the Strip decoder to one token: it removes up to start
// leading and up to stop trailing occurrences of the character.
func (st *decStep) strip(tok string) string {
	for i := 0; i < st.start; i++ {
		r, n := utf8.DecodeRuneInString(tok)
		if n == 0 || r != st.stripChar {
			break
		}
		tok = tok[n:]
	}
	for i := 0; i < st.stop; i++ {
		r, n := utf8.DecodeLastRuneInString(tok)
		if n == 0 || r != st.stripChar {
			break
		}
		tok = tok[:len(tok)-n]
	}
	return tok
}

// mapToken applies a per-token step (Replace or Strip).
func (st *decStep) mapToken(tok string) string {
	if st.kind == decReplace {
		return st.pat.replaceAll(tok, st.content)
	}
	return st.strip(tok)
}

// byteToken parses a byte-fallback piece "<0xNN>" the way Hugging Face's
// ByteFallback decoder does (Rust u8::from_str_radix on the two characters).
func byteToken(tok string) (byte, bool) {
	if len(tok) != 6 || tok[0] != '<' || tok[1] != '0' || tok[2] != 'x' || tok[5] != '>' {
		return 0, false
	}
	hi, lo := tok[3], tok[4]
	if hi == '+' {
		v, ok := hexDigit(lo)
		return v, ok
	}
	h, ok1 := hexDigit(hi)
	l, ok2 := hexDigit(lo)
	return h<<4 | l, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// ---- post-processor ----

// buildPostProcessor returns the ids the TemplateProcessing "single"
// template puts before and after the sequence.
func buildPostProcessor(raw json.RawMessage) (prefix, suffix []int32, err error) {
	if isNull(raw) {
		return nil, nil, nil
	}
	c, err := decodeComponent("post_processor", raw)
	if err != nil {
		return nil, nil, err
	}
	if c.Type != "TemplateProcessing" {
		return nil, nil, fmt.Errorf("unsupported post_processor type %q (supported: TemplateProcessing)", c.Type)
	}
	seen := false
	for i, p := range c.Single {
		switch {
		case p.Sequence != nil:
			if seen {
				return nil, nil, fmt.Errorf("post_processor TemplateProcessing: single template has two sequences")
			}
			seen = true
		case p.SpecialToken != nil:
			st, ok := c.SpecialTokens[p.SpecialToken.ID]
			if !ok {
				return nil, nil, fmt.Errorf("post_processor TemplateProcessing: special token %q is not in special_tokens", p.SpecialToken.ID)
			}
			if seen {
				suffix = append(suffix, st.IDs...)
			} else {
				prefix = append(prefix, st.IDs...)
			}
		default:
			return nil, nil, fmt.Errorf("post_processor TemplateProcessing: single[%d] is neither SpecialToken nor Sequence", i)
		}
	}
	if !seen {
		return nil, nil, fmt.Errorf("post_processor TemplateProcessing: single template has no sequence")
	}
	return prefix, suffix, nil
}
