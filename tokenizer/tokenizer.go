package tokenizer

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unicode/utf8"
)

// Tokenizer is a Hugging Face BPE tokenizer loaded from tokenizer.json. It
// is immutable after loading and safe for concurrent use.
type Tokenizer struct {
	pieces  []string // id → piece ("" for ids that name nothing)
	special []bool   // id → special added token
	tokenID map[string]int32

	added     []addedToken
	rawMatch  *addedMatcher // added tokens matched before normalization
	normMatch *addedMatcher // added tokens matched after normalization

	norm []normStep
	pre  []preSplit
	bpe  bpeModel
	dec  []decStep

	prefix, suffix []int32 // post-processor ids around a single sequence
	bos            int32

	pool sync.Pool // *encodeScratch
}

type encodeScratch struct {
	bpe   bpeScratch
	words []string
}

// maxIDSlack bounds how sparse ids may be, so a corrupt file cannot make
// the loader allocate a huge id table.
const maxIDSlack = 1 << 20

func build(spec *fileSpec) (*Tokenizer, error) {
	m := &spec.model
	switch m.Type {
	case "BPE":
	case "":
		if !spec.haveMerge {
			return nil, errors.New(`model: no "type" and no "merges"; only BPE models are supported`)
		}
	default:
		return nil, fmt.Errorf("unsupported model type %q (only BPE is supported)", m.Type)
	}
	if !spec.haveVocab {
		return nil, errors.New(`model: no "vocab"`)
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, fmt.Errorf("model: BPE dropout %v is not supported (it makes encoding random)", *m.Dropout)
	}

	t := &Tokenizer{bos: -1}
	arena := string(spec.arena) // one copy; pieces are substrings of it
	str := func(sp span) string { return arena[sp.off : sp.off+sp.n] }

	// Vocabulary.
	maxID := int32(-1)
	vocab := make(map[string]int32, len(spec.vocab))
	for _, e := range spec.vocab {
		if e.id < 0 {
			return nil, fmt.Errorf("model.vocab: %q has negative id %d", str(e.piece), e.id)
		}
		vocab[str(e.piece)] = e.id
		maxID = max(maxID, e.id)
	}
	for i := range spec.added {
		a := &spec.added[i]
		if a.ID == nil {
			return nil, fmt.Errorf("added_tokens[%d] (%q): missing id", i, a.Content)
		}
		if *a.ID < 0 {
			return nil, fmt.Errorf("added_tokens[%d] (%q): negative id %d", i, a.Content, *a.ID)
		}
		maxID = max(maxID, *a.ID)
	}
	if int(maxID) >= len(spec.vocab)+len(spec.added)+maxIDSlack {
		return nil, fmt.Errorf("model.vocab: id %d is far beyond the %d pieces; the file looks corrupt", maxID, len(spec.vocab))
	}
	t.pieces = make([]string, maxID+1)
	for _, e := range spec.vocab {
		t.pieces[e.id] = str(e.piece)
	}
	t.special = make([]bool, maxID+1)

	// BPE model.
	b := &t.bpe
	b.vocab = vocab
	b.unk = -1
	b.byteFallback = m.ByteFallback
	b.fuseUnk = m.FuseUnk
	b.ignoreMerges = m.IgnoreMerges
	if m.ContinuingSubwordPrefix != nil {
		b.contPrefix = *m.ContinuingSubwordPrefix
	}
	if m.EndOfWordSuffix != nil {
		b.wordSuffix = *m.EndOfWordSuffix
	}
	if m.UnkToken != nil {
		id, ok := vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("model: unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		b.unk = id
	}
	b.hasAllBytes = true
	for i := range b.byteID {
		id, ok := vocab[fmt.Sprintf("<0x%02X>", i)]
		if !ok {
			id = -1
			b.hasAllBytes = false
		}
		b.byteID[i] = id
	}
	if b.contPrefix == "" && b.wordSuffix == "" {
		b.charID = make([]int32, 0x10000)
		for i := range b.charID {
			b.charID[i] = -1
		}
		for _, e := range spec.vocab {
			p := str(e.piece)
			if r, ok := singleRune(p); ok && r < 0x10000 {
				b.charID[r] = e.id
			}
		}
	}

	// Merges. Resolving 515k merges to ids is three map lookups each and
	// dominated by cache misses, so it runs on all cores.
	resolved, err := resolveMerges(spec.merges, str, vocab, len(b.contPrefix))
	if err != nil {
		return nil, err
	}
	b.merges = newMergeTable(len(resolved))
	for rank, r := range resolved {
		b.merges.put(r[0], r[1], int32(rank), r[2])
	}

	// Added tokens.
	t.tokenID = make(map[string]int32, len(spec.added))
	t.added = make([]addedToken, len(spec.added))
	for i, a := range spec.added {
		normalized := !a.Special // Hugging Face's default
		if a.Normalized != nil {
			normalized = *a.Normalized
		}
		t.added[i] = addedToken{id: *a.ID, content: a.Content, special: a.Special, singleWord: a.SingleWord,
			lstrip: a.LStrip, rstrip: a.RStrip, normalized: normalized}
		t.pieces[*a.ID] = a.Content
		t.tokenID[a.Content] = *a.ID
	}
	for _, a := range t.added {
		if a.special {
			// Hugging Face decides "special" by content, so a vocabulary
			// piece with the same text is special too.
			t.special[a.id] = true
			if id, ok := vocab[a.content]; ok {
				t.special[id] = true
			}
		}
	}

	if t.norm, err = buildNormalizer(spec.normalizer, nil); err != nil {
		return nil, err
	}
	if t.pre, err = buildPreTokenizer(spec.preTokenizer, nil); err != nil {
		return nil, err
	}
	if t.dec, err = buildDecoder(spec.decoder, nil); err != nil {
		return nil, err
	}
	if err := checkDecoderOrder(t.dec); err != nil {
		return nil, err
	}
	if t.prefix, t.suffix, err = buildPostProcessor(spec.postProcessor); err != nil {
		return nil, err
	}
	for _, id := range append(append([]int32(nil), t.prefix...), t.suffix...) {
		if id < 0 || int(id) >= len(t.pieces) {
			return nil, fmt.Errorf("post_processor: special token id %d is outside the vocabulary", id)
		}
	}

	// Matchers: tokens with normalized=false are found in the raw text, the
	// others in the normalized text (with their content normalized).
	var rawPats, normPats []string
	var rawToks, normToks []*addedToken
	for i := range t.added {
		a := &t.added[i]
		if a.normalized {
			normPats = append(normPats, normalize(t.norm, a.content))
			normToks = append(normToks, a)
		} else {
			rawPats = append(rawPats, a.content)
			rawToks = append(rawToks, a)
		}
	}
	if len(rawPats) > 0 {
		t.rawMatch = newAddedMatcher(rawPats, rawToks)
	}
	if len(normPats) > 0 {
		t.normMatch = newAddedMatcher(normPats, normToks)
	}

	switch {
	case len(t.prefix) == 1:
		t.bos = t.prefix[0]
	default:
		if id, ok := t.tokenID["<bos>"]; ok {
			t.bos = id
		}
	}
	t.pool.New = func() any { return new(encodeScratch) }
	return t, nil
}

func singleRune(s string) (rune, bool) {
	r, n := utf8.DecodeRuneInString(s)
	return r, n > 0 && n == len(s) && !(r == utf8.RuneError && n == 1)
}

// Encode returns the token ids of text. With addSpecial the post-processor
// template is applied (for Gemma: <bos> is prepended).
//
// Added tokens (special or not, such as "<start_of_turn>" or "\n") are
// recognised anywhere in text, as Hugging Face does by default. Text that is
// not valid UTF-8 is first decoded the way Python's
// bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy do:
// each maximal invalid subsequence becomes U+FFFD.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int32 {
	text = validUTF8(text)
	ids := make([]int32, 0, len(text)/3+len(t.prefix)+len(t.suffix)+1)
	if addSpecial {
		ids = append(ids, t.prefix...)
	}
	sc := t.pool.Get().(*encodeScratch)
	if sc.bpe.cache == nil && len(text) >= pairCacheMinInput {
		sc.bpe.cache = newPairCache()
	}
	t.rawMatch.split(text, func(seg string, tok *addedToken) {
		if tok != nil {
			ids = append(ids, tok.id)
			return
		}
		if len(t.norm) > 0 {
			seg = normalize(t.norm, seg)
		}
		t.normMatch.split(seg, func(seg string, tok *addedToken) {
			if tok != nil {
				ids = append(ids, tok.id)
				return
			}
			ids = t.encodeNormalized(ids, seg, sc)
		})
	})
	t.pool.Put(sc)
	if addSpecial {
		ids = append(ids, t.suffix...)
	}
	return ids
}

// encodeNormalized pre-tokenizes a normalized segment and runs BPE on each
// word.
func (t *Tokenizer) encodeNormalized(dst []int32, seg string, sc *encodeScratch) []int32 {
	if len(t.pre) == 0 {
		return t.bpe.encodeWord(dst, seg, &sc.bpe)
	}
	words := append(sc.words[:0], seg)
	var next []string
	for i := range t.pre {
		next = next[:0]
		for _, w := range words {
			next = t.pre[i].split(w, next)
		}
		words, next = next, words
	}
	for _, w := range words {
		dst = t.bpe.encodeWord(dst, w, &sc.bpe)
	}
	sc.words = words[:0]
	return dst
}

// Decode returns the text of ids, as Hugging Face's decode does: each id
// becomes its piece (ids outside the vocabulary are skipped, and so are
// special tokens when skipSpecial is set), then the decoder runs. For Gemma
// that replaces "▁" with a space, turns runs of <0xNN> byte pieces into
// text (a run that is not valid UTF-8 becomes one U+FFFD per byte, as
// Hugging Face's ByteFallback decoder does) and concatenates.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if p, ok := t.piece(id); ok && !(skipSpecial && t.special[id]) {
			toks = append(toks, p)
		}
	}
	if len(t.dec) == 0 {
		return strings.Join(toks, " ")
	}
	for i := range t.dec {
		st := &t.dec[i]
		switch st.kind {
		case decReplace, decStrip:
			for j, tok := range toks {
				toks[j] = st.mapToken(tok)
			}
		case decFuse:
			toks = []string{strings.Join(toks, "")}
		case decByteFallback:
			toks = byteFallback(toks)
		}
	}
	return strings.Join(toks, "")
}

// byteFallback is Hugging Face's ByteFallback decoder.
func byteFallback(toks []string) []string {
	out := toks[:0:0]
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if isValidUTF8(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, tok := range toks {
		if b, ok := byteToken(tok); ok {
			run = append(run, b)
			continue
		}
		flush()
		out = append(out, tok)
	}
	flush()
	return out
}

func (t *Tokenizer) piece(id int32) (string, bool) {
	if id < 0 || int(id) >= len(t.pieces) || t.pieces[id] == "" {
		return "", false
	}
	return t.pieces[id], true
}

// TokenID returns the id of a piece (an added token's content or a
// vocabulary piece such as "▁world" or "<0x0A>").
func (t *Tokenizer) TokenID(piece string) (int32, bool) {
	if id, ok := t.tokenID[piece]; ok {
		return id, true
	}
	id, ok := t.bpe.vocab[piece]
	return id, ok
}

// Piece returns the piece of id as stored in the vocabulary (with "▁" for
// spaces and "<0xNN>" for bytes), or "" if id names no piece.
func (t *Tokenizer) Piece(id int32) string {
	p, _ := t.piece(id)
	return p
}

// VocabSize returns the number of ids, added tokens included (one more
// than the largest id). For Gemma 3 that is 262145: the 262144 pieces of the
// model plus <image_soft_token>.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// BOS returns the id of the beginning-of-sequence token: the token the
// post-processor puts in front of a sequence, or else "<bos>".
func (t *Tokenizer) BOS() (int32, bool) { return t.bos, t.bos >= 0 }

// IsSpecial reports whether id is a special added token (those that
// Decode's skipSpecial drops, such as <bos>, <eos>, <start_of_turn>).
func (t *Tokenizer) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.special) && t.special[id]
}

// SpecialTokens returns the ids of the special added tokens, in file order.
func (t *Tokenizer) SpecialTokens() []int32 {
	var ids []int32
	for _, a := range t.added {
		if a.special {
			ids = append(ids, a.id)
		}
	}
	return ids
}

// resolveMerges returns the ids (a, b, merged) of every merge.
func resolveMerges(merges [][2]span, str func(span) string, vocab map[string]int32, prefixLen int) ([][3]int32, error) {
	out := make([][3]int32, len(merges))
	const chunk = 1 << 15
	workers := min(runtime.GOMAXPROCS(0), (len(merges)+chunk-1)/chunk)
	if workers < 1 {
		workers = 1
	}
	errs := make([]error, workers)
	per := (len(merges) + workers - 1) / workers
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := w*per, min((w+1)*per, len(merges))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cat []byte
			for rank := lo; rank < hi; rank++ {
				a, b := str(merges[rank][0]), str(merges[rank][1])
				aID, ok := vocab[a]
				if !ok {
					errs[w] = fmt.Errorf("model.merges[%d]: %q is not in the vocabulary", rank, a)
					return
				}
				bID, ok := vocab[b]
				if !ok {
					errs[w] = fmt.Errorf("model.merges[%d]: %q is not in the vocabulary", rank, b)
					return
				}
				if len(b) < prefixLen {
					errs[w] = fmt.Errorf("model.merges[%d]: %q is shorter than the continuing_subword_prefix", rank, b)
					return
				}
				cat = append(append(cat[:0], a...), b[prefixLen:]...)
				newID, ok := vocab[string(cat)]
				if !ok {
					errs[w] = fmt.Errorf("model.merges[%d]: merged piece %q is not in the vocabulary", rank, cat)
					return
				}
				out[rank] = [3]int32{aID, bID, newID}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
