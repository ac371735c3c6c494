package tokenizer

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unicode/utf8"
)

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

	b.setupWordSplit(func(yield func(string) bool) {
		for _, e := range spec.vocab {
			if !yield(str(e.piece)) {
				return
			}
		}
	})

	// Merges. Resolving 515k merges to ids is three map lookups each and
	// dominated by cache misses, so it runs on all cores.
	resolved, err := resolveMerges(spec.merges, spec.mergeArena, vocab, len(b.contPrefix))
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

// resolveMerges returns the ids (a, b, merged) of every merge; arena holds
// the merges' pieces.
func resolveMerges(merges [][2]span, arena []byte, vocab map[string]int32, prefixLen int) ([][3]int32, error) {
	out := make([][3]int32, len(merges))
	const chunk = 1 << 15
	workers := max(1, min(runtime.GOMAXPROCS(0), (len(merges)+chunk-1)/chunk))
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
				sa, sb := merges[rank][0], merges[rank][1]
				a, b := arena[sa.off:sa.off+sa.n], arena[sb.off:sb.off+sb.n]
				// vocab[string(bytes)] does not allocate.
				aID, ok := vocab[string(a)]
				if !ok {
					errs[w] = fmt.Errorf("model.merges[%d]: %q is not in the vocabulary", rank, a)
					return
				}
				bID, ok := vocab[string(b)]
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
