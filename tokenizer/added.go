package tokenizer

import (
	"sort"
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of "added_tokens".
type addedToken struct {
	id         int32
	content    string
	special    bool
	singleWord bool
	lstrip     bool
	rstrip     bool
	normalized bool
}

// addedMatcher finds added tokens in text: leftmost match first, and the
// longest one among those starting there (Aho-Corasick "LeftmostLongest",
// as Hugging Face does), over a byte trie.
type addedMatcher struct {
	nodes []trieNode
	first [256]bool // bytes that can start a token
	toks  []*addedToken
}

type trieNode struct {
	edges []trieEdge // sorted by byte
	tok   int32      // index into toks, or -1
}

type trieEdge struct {
	b     byte
	child int32
}

// newAddedMatcher builds the trie over the given patterns (pattern i
// matches toks[i]). Empty patterns are ignored.
func newAddedMatcher(patterns []string, toks []*addedToken) *addedMatcher {
	m := &addedMatcher{nodes: []trieNode{{tok: -1}}, toks: toks}
	for i, p := range patterns {
		if p == "" {
			continue
		}
		n := int32(0)
		for j := 0; j < len(p); j++ {
			n = m.child(n, p[j])
		}
		if m.nodes[n].tok < 0 {
			m.nodes[n].tok = int32(i)
		}
		m.first[p[0]] = true
	}
	return m
}

func (m *addedMatcher) child(n int32, b byte) int32 {
	edges := m.nodes[n].edges
	i := sort.Search(len(edges), func(i int) bool { return edges[i].b >= b })
	if i < len(edges) && edges[i].b == b {
		return edges[i].child
	}
	c := int32(len(m.nodes))
	m.nodes = append(m.nodes, trieNode{tok: -1})
	edges = append(edges, trieEdge{})
	copy(edges[i+1:], edges[i:])
	edges[i] = trieEdge{b, c}
	m.nodes[n].edges = edges
	return c
}

func (m *addedMatcher) step(n int32, b byte) int32 {
	edges := m.nodes[n].edges
	if len(edges) <= 8 {
		for _, e := range edges {
			if e.b == b {
				return e.child
			}
		}
		return -1
	}
	i := sort.Search(len(edges), func(i int) bool { return edges[i].b >= b })
	if i < len(edges) && edges[i].b == b {
		return edges[i].child
	}
	return -1
}

// longestAt returns the end of the longest token starting at i and its
// index, or -1.
func (m *addedMatcher) longestAt(s string, i int) (end int, tok int32) {
	end, tok = -1, -1
	n := int32(0)
	for j := i; j < len(s); j++ {
		n = m.step(n, s[j])
		if n < 0 {
			break
		}
		if t := m.nodes[n].tok; t >= 0 {
			end, tok = j+1, t
		}
	}
	return end, tok
}

// split calls emit for every piece of s in order: text between tokens with
// tok == nil, and each matched token. It applies the single_word, lstrip
// and rstrip rules of Hugging Face's AddedVocabulary.
func (m *addedMatcher) split(s string, emit func(text string, tok *addedToken)) {
	if m == nil || len(m.nodes) == 1 {
		if s != "" {
			emit(s, nil)
		}
		return
	}
	emitted := 0 // s[:emitted] has been emitted
	for i := 0; i < len(s); {
		if !m.first[s[i]] {
			i++
			continue
		}
		end, ti := m.longestAt(s, i)
		if ti < 0 {
			i++
			continue
		}
		tok := m.toks[ti]
		start, stop := i, end
		i = end
		if tok.singleWord {
			startOK := start == 0 || !endsWithWordChar(s[:start])
			stopOK := stop == len(s) || !startsWithWordChar(s[stop:])
			if !startOK || !stopOK {
				continue
			}
		}
		if tok.lstrip {
			start = max(spaceLeftmostAtEnd(s[:start]), emitted)
		}
		if tok.rstrip {
			stop += spaceRightmostAtStart(s[stop:])
			i = stop
		}
		if start > emitted {
			emit(s[emitted:start], nil)
		}
		emit(s[start:stop], tok)
		emitted = stop
	}
	if emitted < len(s) {
		emit(s[emitted:], nil)
	}
}

// isWordChar approximates the regex class \w (Unicode): letters, marks,
// decimal digits, connector punctuation and the joiners.
func isWordChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.M, r) ||
		unicode.Is(unicode.Pc, r) || r == 0x200C || r == 0x200D || unicode.Is(unicode.Nl, r)
}

func endsWithWordChar(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordChar(r)
}

func startsWithWordChar(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordChar(r)
}

// spaceLeftmostAtEnd returns where the trailing whitespace of s starts.
func spaceLeftmostAtEnd(s string) int {
	i := len(s)
	for i > 0 {
		r, n := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= n
	}
	return i
}

// spaceRightmostAtStart returns the length of the leading whitespace of s.
func spaceRightmostAtStart(s string) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += n
	}
	return i
}
