package tokenizer

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// checkDecoderOrder rejects decoder sequences whose byte-fallback step
// cannot be streamed: ByteFallback after Fuse, or twice.
func checkDecoderOrder(steps []decStep) error {
	fused, bf := false, false
	for _, st := range steps {
		switch st.kind {
		case decFuse:
			fused = true
		case decByteFallback:
			if fused {
				return errors.New("unsupported decoder: ByteFallback after Fuse")
			}
			if bf {
				return errors.New("unsupported decoder: ByteFallback twice")
			}
			bf = true
		}
	}
	return nil
}

// StreamDecoder turns token ids, fed one at a time, into text as soon as
// it is complete. It never splits a UTF-8 character: byte-fallback pieces
// (<0xNN>) are held until they form a whole character.
//
// The concatenation of everything Add and Flush return equals
// Tokenizer.Decode of the same ids, with one exception: when a run of
// consecutive byte pieces holds complete characters followed by bytes that
// are not valid UTF-8, Decode (like Hugging Face) turns the whole run into
// one U+FFFD per byte, whereas the stream has already released the
// complete characters and replaces only the bytes from the first invalid
// one on (one U+FFFD per byte). Runs that are entirely valid or start with
// invalid bytes decode identically.
//
// A StreamDecoder is not safe for concurrent use.
type StreamDecoder struct {
	t           *Tokenizer
	skipSpecial bool

	pre, post []*decStep // per-token steps before and after ByteFallback
	hasBF     bool
	after     []afterStage // steps after Fuse, applied to the text stream
	noDecoder bool
	started   bool

	inRun    bool // inside a run of byte pieces
	poisoned bool // the run has had an invalid byte
	pending  []byte
	out      []byte
}

// NewStreamDecoder returns a streaming decoder. With skipSpecial, special
// tokens produce no text (as in Decode).
func (t *Tokenizer) NewStreamDecoder(skipSpecial bool) *StreamDecoder {
	d := &StreamDecoder{t: t, skipSpecial: skipSpecial, noDecoder: len(t.dec) == 0}
	phase := 0 // 0: before ByteFallback, 1: after it, 2: after Fuse
	for i := range t.dec {
		st := &t.dec[i]
		switch st.kind {
		case decByteFallback:
			d.hasBF = true
			phase = 1
		case decFuse:
			phase = 2
		default:
			switch phase {
			case 0:
				d.pre = append(d.pre, st)
			case 1:
				d.post = append(d.post, st)
			default:
				d.after = append(d.after, newAfterStage(st))
			}
		}
	}
	return d
}

// Add feeds one token id and returns the text it completes (often empty
// for byte pieces). Ids outside the vocabulary produce no text.
func (d *StreamDecoder) Add(id int32) string {
	p, ok := d.t.piece(id)
	if !ok || (d.skipSpecial && d.t.special[id]) {
		return ""
	}
	if d.noDecoder {
		if d.started {
			p = " " + p
		}
		d.started = true
		return p
	}
	for _, st := range d.pre {
		p = st.mapToken(p)
	}
	d.out = d.out[:0]
	if d.hasBF {
		if b, ok := byteToken(p); ok {
			d.addByte(b)
			return d.finish()
		}
		d.endRun()
	}
	d.emit(p)
	return d.finish()
}

// Flush returns the text still held back (an unfinished byte sequence
// becomes one U+FFFD per byte) and resets the decoder for a new sequence.
func (d *StreamDecoder) Flush() string {
	d.out = d.out[:0]
	d.endRun()
	s := string(d.out)
	for _, st := range d.after {
		s = st.push(s)
		s += st.flush()
	}
	d.Reset()
	return s
}

// Reset drops any held-back text and starts a new sequence.
func (d *StreamDecoder) Reset() {
	d.inRun, d.poisoned, d.started = false, false, false
	d.pending = d.pending[:0]
	d.out = d.out[:0]
	for _, st := range d.after {
		st.reset()
	}
}

// emit appends a decoded piece after the per-token steps that follow
// ByteFallback.
func (d *StreamDecoder) emit(s string) {
	for _, st := range d.post {
		s = st.mapToken(s)
	}
	d.out = append(d.out, s...)
}

func (d *StreamDecoder) finish() string {
	if len(d.after) == 0 {
		return string(d.out)
	}
	s := string(d.out)
	for _, st := range d.after {
		s = st.push(s)
	}
	return s
}

func (d *StreamDecoder) addByte(b byte) {
	if !d.inRun {
		d.inRun, d.poisoned = true, false
		d.pending = d.pending[:0]
	}
	if d.poisoned {
		d.emit("\uFFFD")
		return
	}
	d.pending = append(d.pending, b)
	switch prefixState(d.pending) {
	case utf8Complete:
		d.emit(string(d.pending))
		d.pending = d.pending[:0]
	case utf8Invalid:
		d.poisoned = true
		for range d.pending {
			d.emit("\uFFFD")
		}
		d.pending = d.pending[:0]
	}
}

// endRun closes a run of byte pieces; an unfinished character is invalid.
func (d *StreamDecoder) endRun() {
	if !d.inRun {
		return
	}
	for range d.pending {
		d.emit("\uFFFD")
	}
	d.pending = d.pending[:0]
	d.inRun, d.poisoned = false, false
}

const (
	utf8Complete = iota
	utf8Partial
	utf8Invalid
)

// prefixState classifies bytes that are fed one at a time: a complete
// character, a valid beginning of one, or invalid.
func prefixState(p []byte) int {
	if utf8.FullRune(p) {
		r, n := utf8.DecodeRune(p)
		if (r == utf8.RuneError && n == 1) || n != len(p) {
			return utf8Invalid
		}
		return utf8Complete
	}
	if p[0] < 0xC2 || p[0] > 0xF4 || maximalSubpart(string(p)) != len(p) {
		return utf8Invalid
	}
	return utf8Partial
}

// afterStage is a decoder step after Fuse, applied to the whole text as it
// streams by.
type afterStage interface {
	push(s string) string
	flush() string
	reset()
}

func newAfterStage(st *decStep) afterStage {
	if st.kind == decStrip {
		return &stripStage{st: st, startLeft: st.start}
	}
	return &replaceStage{st: st}
}

// replaceStage applies Replace to the text. For a literal pattern it holds
// back a tail that could begin a match, so matches across pieces are found
// exactly; a regex pattern is applied to each piece of text separately.
type replaceStage struct {
	st   *decStep
	held string
}

func (r *replaceStage) push(s string) string {
	lit := r.st.pat.lit
	if r.st.pat.re != nil {
		return r.st.pat.replaceAll(s, r.st.content)
	}
	s = r.held + s
	var b strings.Builder
	e := 0 // end of the last complete match
	for {
		i := strings.Index(s[e:], lit)
		if i < 0 {
			break
		}
		b.WriteString(s[e : e+i])
		b.WriteString(r.st.content)
		e += i + len(lit)
	}
	k := min(len(lit)-1, len(s)-e)
	for ; k > 0; k-- {
		if strings.HasSuffix(s, lit[:k]) {
			break
		}
	}
	b.WriteString(s[e : len(s)-k])
	r.held = s[len(s)-k:]
	return b.String()
}

func (r *replaceStage) flush() string {
	s := r.held
	r.held = ""
	return s
}

func (r *replaceStage) reset() { r.held = "" }

// stripStage applies Strip to the whole text: up to start leading and up
// to stop trailing occurrences of the character are removed. Trailing
// candidates are held back until more text or the end shows whether they
// are trailing.
type stripStage struct {
	st        *decStep
	startLeft int
	held      string // trailing run of the character, at most stop long
}

func (s *stripStage) push(text string) string {
	c := s.st.stripChar
	for s.startLeft > 0 && text != "" {
		r, n := utf8.DecodeRuneInString(text)
		if r != c {
			s.startLeft = 0
			break
		}
		text = text[n:]
		s.startLeft--
	}
	if text == "" {
		return ""
	}
	text = s.held + text
	if s.st.stop == 0 {
		s.held = ""
		return text
	}
	cut := len(text)
	for i := 0; i < s.st.stop; i++ {
		r, n := utf8.DecodeLastRuneInString(text[:cut])
		if n == 0 || r != c {
			break
		}
		cut -= n
	}
	s.held = text[cut:]
	return text[:cut]
}

func (s *stripStage) flush() string {
	s.held = "" // trailing characters are stripped at the end
	return ""
}

func (s *stripStage) reset() {
	s.held = ""
	s.startLeft = s.st.start
}
