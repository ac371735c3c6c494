package tokenizer

import (
	"math/bits"
	"slices"
	"strings"
	"unicode/utf8"
)

// mergeTable maps a pair of token ids to the merge's rank and the id of the
// merged token. It is an open-addressing hash table keyed by the two int32
// ids packed into a uint64 (a Go map of 515k entries is several times
// slower to build and to probe).
type mergeTable struct {
	slots []mergeSlot
	mask  uint64
	shift uint
}

type mergeSlot struct {
	key uint64 // a<<32 | b, or emptyKey
	val uint64 // rank<<32 | newID
}

// emptyKey cannot be a real key: ids are non-negative int32s.
const emptyKey = ^uint64(0)

func newMergeTable(n int) mergeTable {
	size := 1 << bits.Len(uint(n*2+1)) // load factor <= 1/2
	t := mergeTable{slots: make([]mergeSlot, size), mask: uint64(size - 1), shift: uint(64 - bits.Len(uint(size-1)))}
	for i := range t.slots {
		t.slots[i].key = emptyKey
	}
	return t
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func (t *mergeTable) hash(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> t.shift }

// put inserts or overwrites (a later duplicate merge wins, as in Hugging
// Face's HashMap collect).
func (t *mergeTable) put(a, b, rank, newID int32) {
	k := pairKey(a, b)
	v := uint64(uint32(rank))<<32 | uint64(uint32(newID))
	for h := t.hash(k); ; h = (h + 1) & t.mask {
		s := &t.slots[h]
		if s.key == emptyKey || s.key == k {
			s.key, s.val = k, v
			return
		}
	}
}

func (t *mergeTable) get(a, b int32) (rank, newID int32, ok bool) {
	if len(t.slots) == 0 {
		return 0, 0, false
	}
	k := pairKey(a, b)
	for h := t.hash(k); ; h = (h + 1) & t.mask {
		s := &t.slots[h]
		if s.key == k {
			return int32(s.val >> 32), int32(uint32(s.val)), true
		}
		if s.key == emptyKey {
			return 0, 0, false
		}
	}
}

// bpeModel is a Hugging Face BPE model.
type bpeModel struct {
	vocab        map[string]int32
	merges       mergeTable
	charID       []int32 // id of each single-rune piece below U+10000, or -1; nil when prefixes/suffixes are set
	byteID       [256]int32
	hasAllBytes  bool
	unk          int32 // -1: none
	byteFallback bool
	fuseUnk      bool
	ignoreMerges bool
	contPrefix   string // continuing_subword_prefix
	wordSuffix   string // end_of_word_suffix

	// splitAt is a character before which a word may be cut into chunks
	// that are merged separately ("▁" for Gemma), or 0. joinBefore lists
	// the characters that some piece has right before splitAt; see
	// encodeWord.
	splitAt    rune
	joinBefore []rune
}

// wordSep is the character Gemma's normalizer puts in place of spaces.
const wordSep = '▁'

// setupWordSplit enables cutting words before wordSep when that is exact
// (see encodeWord): wordSep must be a piece, pieces must be plain
// substrings of the text (no continuing_subword_prefix or
// end_of_word_suffix), ignore_merges must be off, and few characters may
// precede wordSep inside a piece (for Gemma only "▁" and ">").
func (m *bpeModel) setupWordSplit(pieces func(yield func(string) bool)) {
	if m.charID == nil || m.ignoreMerges || m.charID[wordSep] < 0 {
		return
	}
	var join []rune
	for p := range pieces {
		for off := 0; ; {
			i := strings.IndexRune(p[off:], wordSep)
			if i < 0 {
				break
			}
			if off+i > 0 {
				r, _ := utf8.DecodeLastRuneInString(p[:off+i])
				if !slices.Contains(join, r) {
					if join = append(join, r); len(join) > 32 {
						return
					}
				}
			}
			off += i + utf8.RuneLen(wordSep)
		}
	}
	m.splitAt, m.joinBefore = wordSep, join
}

// canSplitAfter reports whether a word may be cut between left and a
// following wordSep: the last character of left must be a piece of its own
// and no piece may contain it followed by wordSep.
func (m *bpeModel) canSplitAfter(left string) bool {
	r, n := utf8.DecodeLastRuneInString(left)
	if n == 0 || slices.Contains(m.joinBefore, r) {
		return false
	}
	_, ok := m.lookupChar(left, len(left)-n, n, r)
	return ok && !(r == utf8.RuneError && n == 1)
}

// symbol is one node of the doubly linked list of a word being merged.
type symbol struct {
	id         int32
	prev, next int32
	n          int32 // byte length; 0 once merged into its left neighbour
}

// mergeItem is a candidate merge of symbols[pos] with its right neighbour:
// order is rank<<32 | pos (the heap pops the lowest rank, then the leftmost
// position, as Hugging Face does) and pair the two ids when it was queued.
// (Three fields keep the struct in registers; five made the heap 3x slower.)
type mergeItem struct {
	order uint64
	pair  uint64
	newID int32
}

func newMergeItem(rank, pos, newID, left, right int32) mergeItem {
	return mergeItem{uint64(uint32(rank))<<32 | uint64(uint32(pos)), pairKey(left, right), newID}
}

func (a mergeItem) pos() int32 { return int32(uint32(a.order)) }

func (a mergeItem) less(b mergeItem) bool { return a.order < b.order }

// bpeScratch holds buffers reused across words.
type bpeScratch struct {
	syms  []symbol
	heap  []mergeItem
	cache *pairCache
	words wordCache
}

// pairCache is a small direct-mapped cache in front of the merge table.
// The merge table (16 MB for Gemma) does not fit in the CPU caches, and
// text uses few distinct pairs most of the time; the cache (256 KiB) does.
// It is only set up for long inputs (pairCacheMinInput), where it pays for
// its allocation.
type pairCache [1 << pairCacheBits]mergeSlot

const pairCacheBits = 14

// pairCacheMinInput is the input length from which Encode uses the cache.
const pairCacheMinInput = 4096

// noMerge is the cached value of a pair that has no merge; real values
// have non-negative ranks.
const noMerge = ^uint64(0)

func newPairCache() *pairCache {
	c := new(pairCache)
	for i := range c {
		c[i].key = emptyKey
	}
	return c
}

// lookup is mergeTable.get through the scratch's cache.
func (m *bpeModel) lookup(sc *bpeScratch, a, b int32) (rank, newID int32, ok bool) {
	if sc.cache == nil {
		return m.merges.get(a, b)
	}
	k := pairKey(a, b)
	e := &sc.cache[(k*0x9E3779B97F4A7C15)>>(64-pairCacheBits)]
	if e.key != k {
		rank, newID, ok = m.merges.get(a, b)
		e.key, e.val = k, noMerge
		if ok {
			e.val = uint64(uint32(rank))<<32 | uint64(uint32(newID))
		}
		return rank, newID, ok
	}
	if e.val == noMerge {
		return 0, 0, false
	}
	return int32(e.val >> 32), int32(uint32(e.val)), true
}

func (sc *bpeScratch) push(it mergeItem) {
	h := append(sc.heap, it)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	sc.heap = h
}

func (sc *bpeScratch) pop() mergeItem {
	h := sc.heap
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	siftDown(h, 0)
	sc.heap = h
	return top
}

func siftDown(h []mergeItem, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h[r].less(h[l]) {
			m = r
		}
		if !h[m].less(h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// addSymbol appends a symbol to the word's list.
func (sc *bpeScratch) addSymbol(id int32, n int) {
	idx := int32(len(sc.syms))
	prev := int32(-1)
	if idx > 0 {
		sc.syms[idx-1].next = idx
		prev = idx - 1
	}
	sc.syms = append(sc.syms, symbol{id: id, prev: prev, next: -1, n: int32(n)})
}

// lookupChar returns the id of the piece for the character w[i:i+size].
func (m *bpeModel) lookupChar(w string, i, size int, r rune) (int32, bool) {
	if m.charID != nil {
		if r < rune(len(m.charID)) {
			id := m.charID[r]
			return id, id >= 0
		}
		id, ok := m.vocab[w[i:i+size]]
		return id, ok
	}
	piece := w[i : i+size]
	if m.contPrefix != "" && i > 0 {
		piece = m.contPrefix + piece
	}
	if m.wordSuffix != "" && i+size == len(w) {
		piece += m.wordSuffix
	}
	id, ok := m.vocab[piece]
	return id, ok
}

// encodeWord appends the ids of one pre-tokenized word to dst.
//
// Gemma has no pre-tokenizer split, so a word is a whole line of text. It
// is cut into chunks before each "▁" (a space) whose preceding character c
// is a piece of its own and never followed by "▁" inside any piece. That is
// exact: every symbol BPE forms has a piece that ends with the piece of its
// last character and starts with that of its first, so a symbol crossing
// the cut would be a piece containing c"▁", and there is none. The chunks
// (mostly words with their leading space) are then merged separately, and
// short ones are remembered in the scratch's word cache.
func (m *bpeModel) encodeWord(dst []int32, w string, sc *bpeScratch) []int32 {
	if m.splitAt == 0 {
		return m.encodeChunk(dst, w, sc)
	}
	start := 0
	for off := 0; off < len(w); {
		j := strings.IndexRune(w[off:], m.splitAt)
		if j < 0 {
			break
		}
		i := off + j
		off = i + utf8.RuneLen(m.splitAt)
		if i > start && m.canSplitAfter(w[start:i]) {
			dst = m.encodeCached(dst, w[start:i], sc)
			start = i
		}
	}
	return m.encodeCached(dst, w[start:], sc)
}

// maxCachedChunk and maxCachedChunks bound the word cache.
const (
	maxCachedChunk  = 64
	maxCachedChunks = 8192
)

// wordCache remembers the ids of short chunks.
type wordCache struct {
	m   map[string]span // chunk → ids[off : off+n]
	ids []int32
}

// noWordCache turns the word cache off (for benchmarks of the merge loop).
var noWordCache = false

// encodeCached is encodeChunk through the scratch's word cache.
func (m *bpeModel) encodeCached(dst []int32, chunk string, sc *bpeScratch) []int32 {
	if len(chunk) > maxCachedChunk || noWordCache {
		return m.encodeChunk(dst, chunk, sc)
	}
	wc := &sc.words
	if sp, ok := wc.m[chunk]; ok {
		return append(dst, wc.ids[sp.off:sp.off+sp.n]...)
	}
	n0 := len(dst)
	dst = m.encodeChunk(dst, chunk, sc)
	if wc.m == nil || len(wc.m) >= maxCachedChunks {
		wc.m = make(map[string]span, 256)
		wc.ids = wc.ids[:0]
	}
	wc.m[strings.Clone(chunk)] = span{uint32(len(wc.ids)), uint32(len(dst) - n0)}
	wc.ids = append(wc.ids, dst[n0:]...)
	return dst
}

// encodeChunk appends the ids of one chunk of a word to dst. It follows
// Hugging Face's BPE::merge_word and Word::merge_all exactly: characters
// (or their <0xNN> byte pieces, or a fused <unk>) become symbols, then the
// adjacent pair with the lowest merge rank is merged, leftmost first, until
// no pair has a merge. Each merge costs O(log n) on the heap.
func (m *bpeModel) encodeChunk(dst []int32, w string, sc *bpeScratch) []int32 {
	if w == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id)
		}
	}
	sc.syms = sc.syms[:0]
	unkN := 0 // pending (fused) unknown bytes
	for i := 0; i < len(w); {
		r, size := utf8.DecodeRuneInString(w[i:])
		if id, ok := m.lookupChar(w, i, size, r); ok {
			if unkN > 0 {
				sc.addSymbol(m.unk, unkN)
				unkN = 0
			}
			sc.addSymbol(id, size)
			i += size
			continue
		}
		if m.byteFallback && (m.hasAllBytes || m.bytesKnown(w[i:i+size])) {
			// As in Hugging Face, a pending unk is not flushed before byte
			// pieces (it can only be pending when some byte is missing).
			for j := i; j < i+size; j++ {
				sc.addSymbol(m.byteID[w[j]], 1)
			}
			i += size
			continue
		}
		if m.unk >= 0 {
			if unkN > 0 && !m.fuseUnk {
				sc.addSymbol(m.unk, unkN)
				unkN = 0
			}
			unkN += size
		}
		// Without an unk token Hugging Face fails the whole encoding; the
		// character is dropped here instead, so Encode never fails.
		i += size
	}
	if unkN > 0 {
		sc.addSymbol(m.unk, unkN)
	}
	syms := sc.syms
	if len(syms) > 1 {
		sc.heap = sc.heap[:0]
		for i := 0; i+1 < len(syms); i++ {
			l, r := syms[i].id, syms[i+1].id
			if rank, nid, ok := m.lookup(sc, l, r); ok {
				sc.heap = append(sc.heap, newMergeItem(rank, int32(i), nid, l, r))
			}
		}
		for i := len(sc.heap)/2 - 1; i >= 0; i-- {
			siftDown(sc.heap, i)
		}
		for len(sc.heap) > 0 {
			top := sc.pop()
			pos := top.pos()
			s := &syms[pos]
			if s.n == 0 || s.next < 0 {
				continue
			}
			nx := s.next
			right := syms[nx]
			if pairKey(s.id, right.id) != top.pair {
				// The pair changed since the entry was queued. Hugging Face
				// still merges if the new pair yields the same token.
				if _, nid, ok := m.lookup(sc, s.id, right.id); !ok || nid != top.newID {
					continue // stale entry
				}
			}
			s.id = top.newID
			s.n += right.n
			s.next = right.next
			syms[nx].n = 0
			if right.next >= 0 {
				syms[right.next].prev = pos
			}
			if s.prev >= 0 {
				l := syms[s.prev].id
				if rank, nid, ok := m.lookup(sc, l, s.id); ok {
					sc.push(newMergeItem(rank, s.prev, nid, l, s.id))
				}
			}
			if s.next >= 0 {
				r := syms[s.next].id
				if rank, nid, ok := m.lookup(sc, s.id, r); ok {
					sc.push(newMergeItem(rank, pos, nid, s.id, r))
				}
			}
		}
	}
	for i := int32(0); i >= 0 && int(i) < len(syms); i = syms[i].next {
		dst = append(dst, syms[i].id)
	}
	return dst
}

func (m *bpeModel) bytesKnown(s string) bool {
	for j := 0; j < len(s); j++ {
		if m.byteID[s[j]] < 0 {
			return false
		}
	}
	return true
}
