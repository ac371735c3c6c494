package tokenizer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// gzipMagic starts every gzip stream; a JSON document never starts with it.
var gzipMagic = []byte{0x1f, 0x8b}

// Load reads a Hugging Face tokenizer.json file, plain or gzip-compressed
// (detected from the content, not the name).
func Load(path string) (*Tokenizer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	data, err := readMaybeGzip(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("tokenizer: reading %s: %w", path, err)
	}
	t, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	return t, nil
}

// LoadJSON reads a Hugging Face tokenizer.json document from r. A gzip
// stream is decompressed transparently.
func LoadJSON(r io.Reader) (*Tokenizer, error) {
	data, err := readMaybeGzip(r, -1)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return t, nil
}

// readMaybeGzip reads all of r, decompressing it if it is gzip. size is the
// size of r when known (a file), used to pre-size the buffer.
func readMaybeGzip(r io.Reader, size int64) ([]byte, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if !bytes.Equal(head, gzipMagic) {
		var buf bytes.Buffer
		if size > 0 {
			buf.Grow(int(size) + bytes.MinRead)
		}
		_, err := buf.ReadFrom(br)
		return buf.Bytes(), err
	}
	// The gzip trailer's ISIZE (uncompressed size mod 2^32) sizes the
	// buffer when r is a file; it is only a hint.
	hint := 0
	if f, ok := r.(*os.File); ok && size >= 18 {
		var tail [4]byte
		if _, err := f.ReadAt(tail[:], size-4); err == nil {
			if n := binary.LittleEndian.Uint32(tail[:]); n < 1<<30 {
				hint = int(n)
			}
		}
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	var buf bytes.Buffer
	buf.Grow(hint + bytes.MinRead)
	if _, err := buf.ReadFrom(zr); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("gzip: %w (the file is truncated)", err)
		}
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// addedTokenJSON is one entry of "added_tokens".
type addedTokenJSON struct {
	ID         *int32 `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"`
	Special    bool   `json:"special"`
}

// modelJSON holds the small fields of "model".
type modelJSON struct {
	Type                    string   `json:"type"`
	Dropout                 *float64 `json:"dropout"`
	UnkToken                *string  `json:"unk_token"`
	ContinuingSubwordPrefix *string  `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string  `json:"end_of_word_suffix"`
	FuseUnk                 bool     `json:"fuse_unk"`
	ByteFallback            bool     `json:"byte_fallback"`
	IgnoreMerges            bool     `json:"ignore_merges"`
}

// span is a byte range in a string arena.
type span struct{ off, n uint32 }

// fileSpec is tokenizer.json after the first pass.
type fileSpec struct {
	added                           []addedTokenJSON
	normalizer, preTokenizer        json.RawMessage
	postProcessor, decoder          json.RawMessage
	model                           modelJSON
	haveModel, haveVocab, haveMerge bool

	arena      []byte // unescaped vocabulary pieces
	mergeArena []byte // unescaped merge pieces (only needed while building)
	vocab      []vocabEntry
	merges     [][2]span
}

type vocabEntry struct {
	piece span
	id    int32
}

// parse reads a whole tokenizer.json document and builds the tokenizer.
func parse(data []byte) (*Tokenizer, error) {
	spec, err := scan(data)
	if err != nil {
		return nil, err
	}
	return build(spec)
}

// scan walks the document once; see scanner.
func scan(data []byte) (*fileSpec, error) {
	s := &scanner{data: data}
	if s.peek() != '{' {
		if s.pos >= len(data) {
			return nil, errors.New("tokenizer.json: empty document")
		}
		return nil, s.errorf("not a JSON object (does not start with '{')")
	}
	spec := &fileSpec{arena: make([]byte, 0, len(data)/16), mergeArena: make([]byte, 0, len(data)/6)}
	rawInto := func(dst *json.RawMessage) error {
		b, err := s.raw()
		*dst = b
		return err
	}
	err := s.object(func(key string) error {
		switch key {
		case "added_tokens":
			var raw json.RawMessage
			if err := rawInto(&raw); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &spec.added); err != nil {
				return fmt.Errorf("tokenizer.json: added_tokens: %w", err)
			}
			return nil
		case "normalizer":
			return rawInto(&spec.normalizer)
		case "pre_tokenizer":
			return rawInto(&spec.preTokenizer)
		case "post_processor":
			return rawInto(&spec.postProcessor)
		case "decoder":
			return rawInto(&spec.decoder)
		case "model":
			spec.haveModel = true
			return scanModel(s, spec)
		default: // version, truncation, padding, ...
			return s.skip(0)
		}
	})
	if err != nil {
		return nil, err
	}
	if s.skipWS(); s.pos != len(data) {
		return nil, s.errorf("unexpected data after the top-level object")
	}
	if !spec.haveModel {
		return nil, errors.New(`tokenizer.json: no "model" section`)
	}
	return spec, nil
}

func scanModel(s *scanner, spec *fileSpec) error {
	if s.peek() != '{' {
		return s.errorf(`"model" is not an object`)
	}
	// The small fields are collected into a synthetic object for
	// encoding/json.
	small := []byte{'{'}
	err := s.object(func(key string) error {
		switch key {
		case "vocab":
			spec.haveVocab = true
			return scanVocab(s, spec)
		case "merges":
			spec.haveMerge = true
			return scanMerges(s, spec)
		}
		raw, err := s.raw()
		if err != nil {
			return err
		}
		if len(small) > 1 {
			small = append(small, ',')
		}
		small = strconvQuote(small, key)
		small = append(small, ':')
		small = append(small, raw...)
		return nil
	})
	if err != nil {
		return err
	}
	small = append(small, '}')
	if err := json.Unmarshal(small, &spec.model); err != nil {
		return fmt.Errorf("tokenizer.json: model: %w", err)
	}
	return nil
}

// strconvQuote appends key as a JSON string.
func strconvQuote(dst []byte, key string) []byte {
	b, _ := json.Marshal(key)
	return append(dst, b...)
}

// addString appends the next JSON string to arena and returns its span.
func addString(s *scanner, arena *[]byte) (span, error) {
	off := len(*arena)
	var err error
	*arena, err = s.appendString(*arena)
	if err != nil {
		return span{}, err
	}
	if len(*arena) > 1<<32-1 {
		return span{}, s.errorf("strings too large")
	}
	return span{uint32(off), uint32(len(*arena) - off)}, nil
}

func scanVocab(s *scanner, spec *fileSpec) error {
	switch s.peek() {
	case '{':
	case '[':
		return s.errorf(`"model.vocab" is a list (a Unigram vocabulary?); only BPE's {"piece": id} map is supported`)
	default:
		return s.errorf(`"model.vocab" is not an object`)
	}
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	for {
		sp, err := addString(s, &spec.arena)
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		id, err := s.int()
		if err != nil {
			return err
		}
		spec.vocab = append(spec.vocab, vocabEntry{sp, id})
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		case 0:
			return s.errorf("unexpected end of input in model.vocab")
		default:
			return s.errorf("unexpected %q in model.vocab", s.data[s.pos])
		}
	}
}

func scanMerges(s *scanner, spec *fileSpec) error {
	if s.peek() != '[' {
		return s.errorf(`"model.merges" is not a list`)
	}
	return s.array(func(i int) error {
		switch s.peek() {
		case '"':
			// Legacy form: "a b", exactly one space; "#version" lines skipped.
			sp, err := addString(s, &spec.mergeArena)
			if err != nil {
				return err
			}
			line := spec.mergeArena[sp.off : sp.off+sp.n]
			if bytes.HasPrefix(line, []byte("#version")) {
				spec.mergeArena = spec.mergeArena[:sp.off]
				return nil
			}
			sep := bytes.IndexByte(line, ' ')
			if sep < 0 || bytes.IndexByte(line[sep+1:], ' ') >= 0 {
				return fmt.Errorf("tokenizer.json: model.merges[%d] = %q: want two pieces separated by one space", i, line)
			}
			spec.merges = append(spec.merges, [2]span{
				{sp.off, uint32(sep)},
				{sp.off + uint32(sep) + 1, sp.n - uint32(sep) - 1},
			})
			return nil
		case '[':
			var pair [2]span
			n := 0
			err := s.array(func(j int) error {
				if j >= 2 {
					return fmt.Errorf("tokenizer.json: model.merges[%d] has more than two pieces", i)
				}
				sp, err := addString(s, &spec.mergeArena)
				pair[j] = sp
				n++
				return err
			})
			if err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("tokenizer.json: model.merges[%d] has %d pieces, want 2", i, n)
			}
			spec.merges = append(spec.merges, pair)
			return nil
		default:
			return s.errorf("model.merges[%d] is neither a string nor a pair", i)
		}
	})
}
