package tokenizer

import (
	"strings"
	"sync"
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
