package cpu

import (
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// cacheView is a KV cache [Capacity, KVHeads·HeadDim] in F32, BF16 or F16.
type cacheView struct {
	dt    dtype.DType
	f32   []float32
	u16   []uint16
	width int // KVHeads·HeadDim
	slots int
}

func (b *Backend) cache(t kernels.Tensor, what string, width int, write bool) (cacheView, error) {
	c := cacheView{dt: t.DType, width: width}
	if !t.DType.IsFloat() {
		return c, fmt.Errorf("cpu: %s %s must be F32, BF16 or F16", what, t)
	}
	if len(t.Shape) < 2 || width == 0 || t.Numel()%width != 0 || t.Shape[0] == 0 || t.Numel()/width != t.Shape[0] {
		return c, fmt.Errorf("cpu: %s %s should be [Capacity, %d]", what, t, width)
	}
	p, err := b.raw(t, what, write)
	if err != nil {
		return c, err
	}
	c.slots = t.Shape[0]
	if t.DType == dtype.F32 {
		c.f32 = asF32(p)
	} else {
		c.u16 = asU16(p)
	}
	return c, nil
}

// dot returns q·row(slot)[off:off+len(q)], accumulated in float64 (with
// the SIMD kernels of ks for an F32 cache when ks is not nil).
func (c *cacheView) dot(slot, off int, q []float32, f16 *[1 << 16]float32, ks *kernelSet) float32 {
	i := slot*c.width + off
	if ks != nil && c.dt == dtype.F32 && len(q) > 0 {
		return float32(ks.dot(&q[0], &c.f32[i : i+len(q)][0], len(q)))
	}
	var acc float64
	switch c.dt {
	case dtype.F32:
		for d, v := range c.f32[i : i+len(q)] {
			acc += float64(v) * float64(q[d])
		}
	case dtype.BF16:
		for d, v := range c.u16[i : i+len(q)] {
			acc += float64(math.Float32frombits(uint32(v)<<16)) * float64(q[d])
		}
	default:
		for d, v := range c.u16[i : i+len(q)] {
			acc += float64(f16[v]) * float64(q[d])
		}
	}
	return float32(acc)
}

// axpy adds p·row(slot)[off:off+len(acc)] to acc.
func (c *cacheView) axpy(slot, off int, p float64, acc []float64, f16 *[1 << 16]float32, ks *kernelSet) {
	i := slot*c.width + off
	if ks != nil && c.dt == dtype.F32 && len(acc) > 0 {
		ks.axpy(&acc[0], &c.f32[i : i+len(acc)][0], p, len(acc))
		return
	}
	switch c.dt {
	case dtype.F32:
		for d, v := range c.f32[i : i+len(acc)] {
			acc[d] += p * float64(v)
		}
	case dtype.BF16:
		for d, v := range c.u16[i : i+len(acc)] {
			acc[d] += p * float64(math.Float32frombits(uint32(v)<<16))
		}
	default:
		for d, v := range c.u16[i : i+len(acc)] {
			acc[d] += p * float64(f16[v])
		}
	}
}

// StoreKV writes the rows of src [T, KVHeads·HeadDim] into the slots
// positions[t] mod Capacity of cache [Capacity, KVHeads·HeadDim], converting
// to the cache's dtype. Negative positions are an error.
func (b *Backend) StoreKV(cache, src, positions kernels.Tensor) error {
	if b.closed {
		return errClosed
	}
	pos, err := b.ints(positions, "StoreKV: positions")
	if err != nil {
		return err
	}
	width := src.Cols()
	if src.Rows() != len(pos) || len(src.Shape) == 0 {
		return fmt.Errorf("cpu: StoreKV: src %s should have one row per position (%d)", src, len(pos))
	}
	c, err := b.cache(cache, "StoreKV: cache", width, true)
	if err != nil {
		return err
	}
	for t, p := range pos {
		if p < 0 {
			return fmt.Errorf("cpu: StoreKV: positions[%d] = %d is negative", t, p)
		}
	}
	sv, err := b.in(src, "StoreKV: src", slotX)
	if err != nil {
		return err
	}
	for t, p := range pos {
		slot := int(p) % c.slots
		row := sv[t*width : (t+1)*width]
		switch c.dt {
		case dtype.F32:
			copy(c.f32[slot*width:(slot+1)*width], row)
		case dtype.BF16:
			dst := c.u16[slot*width : (slot+1)*width]
			for i, v := range row {
				dst[i] = dtype.F32ToBF16(v)
			}
		default:
			dst := c.u16[slot*width : (slot+1)*width]
			for i, v := range row {
				dst[i] = dtype.F32ToF16(v)
			}
		}
	}
	return nil
}

// attnQueries is how many queries of consecutive positions an attention
// item takes. Where the kernel set has four-query kernels (dot4, axpy4),
// each key and value row is widened to float64 once for the four queries
// that attend to it, each query widened once; every query's products and
// sums are those it gets alone, in the same order, so the results are the
// same bits.
const attnQueries = 4

// attnJob computes attention for items (b, h): head h of the queries
// b·attnQueries .. b·attnQueries+attnQueries-1.
type attnJob struct {
	b      *Backend
	p      kernels.AttentionParams
	q, out []float32
	pos    []int32
	k, v   cacheView
	f16    *[1 << 16]float32
}

func (j *attnJob) run(w, lo, hi int) {
	heads := j.p.Heads
	for r := lo; r < hi; r++ {
		blk, h := r/heads, r%heads
		t0, t1 := blk*attnQueries, min((blk+1)*attnQueries, len(j.pos))
		for t := t0; t < t1; {
			n := 1 // a run of consecutive positions
			for t+n < t1 && j.pos[t+n] == j.pos[t+n-1]+1 {
				n++
			}
			j.queries(w, t, n, h)
			t += n
		}
	}
}

// queries computes head h of the n queries from t, whose positions are
// consecutive: first[i] and last[i] both grow with i.
func (j *attnJob) queries(w, t, n, h int) {
	ws := &j.b.ws[w]
	hd, heads := j.p.HeadDim, j.p.Heads
	off := (h / (heads / j.p.KVHeads)) * hd
	slots := j.k.slots
	ks := j.b.ks
	var first, last [attnQueries]int
	var m [attnQueries]float32
	var sum [attnQueries]float64
	var q [attnQueries][]float32
	for i := range n {
		last[i] = int(j.pos[t+i])
		if j.p.Window > 0 {
			first[i] = max(0, last[i]-j.p.Window+1)
		}
		q[i] = j.q[((t+i)*heads+h)*hd : ((t+i)*heads+h+1)*hd]
		m[i] = float32(math.Inf(-1))
	}
	// Keys [all0, all1] are attended by all four queries: there the
	// four-query kernels run.
	all0, all1 := 1, 0
	four := n == attnQueries && ks != nil && ks.dot4 != nil && hd%32 == 0
	if four && j.k.dt == dtype.F32 {
		all0, all1 = first[n-1], last[0]
		q64 := ws.q64[:n*hd]
		for i := range n {
			for d, v := range q[i] {
				q64[i*hd+d] = float64(v)
			}
		}
	}
	score := func(i int) []float32 { return ws.score[i*slots : i*slots+last[i]-first[i]+1] }
	dots := &ws.dots // in the worker's scratch: the kernels' arguments would escape
	for key := first[0]; key <= last[n-1]; key++ {
		if key >= all0 && key <= all1 {
			slot := key % slots
			ks.dot4(&ws.q64[0], &j.k.f32[slot*j.k.width+off], hd, &dots[0])
			for i := range n {
				s := float32(dots[i]) * j.p.Scale
				score(i)[key-first[i]] = s
				m[i] = max(m[i], s)
			}
			continue
		}
		for i := range n {
			if key < first[i] || key > last[i] {
				continue
			}
			s := j.k.dot(key%slots, off, q[i], j.f16, ks) * j.p.Scale
			score(i)[key-first[i]] = s
			m[i] = max(m[i], s)
		}
	}
	for i := range n {
		sc := score(i)
		for x, s := range sc {
			e := float32(math.Exp(float64(s - m[i])))
			sc[x] = e
			sum[i] += float64(e)
		}
	}
	// Normalized probabilities times V, accumulated in float64.
	acc := ws.acc[:n*hd]
	clear(acc)
	all0, all1 = 1, 0
	if four && j.v.dt == dtype.F32 {
		all0, all1 = first[n-1], last[0]
	}
	p := &ws.dots
	for key := first[0]; key <= last[n-1]; key++ {
		if key >= all0 && key <= all1 {
			for i := range n {
				p[i] = float64(score(i)[key-first[i]]) / sum[i]
			}
			slot := key % slots
			ks.axpy4(&acc[0], &j.v.f32[slot*j.v.width+off], &p[0], hd)
			continue
		}
		for i := range n {
			if key < first[i] || key > last[i] {
				continue
			}
			j.v.axpy(key%slots, off, float64(score(i)[key-first[i]])/sum[i], acc[i*hd:(i+1)*hd], j.f16, ks)
		}
	}
	for i := range n {
		o := j.out[((t+i)*heads+h)*hd : ((t+i)*heads+h+1)*hd]
		for d, a := range acc[i*hd : (i+1)*hd] {
			o[d] = float32(a)
		}
	}
}

// Attention computes out [T, Heads·HeadDim] from q [T, Heads·HeadDim] and the
// caches (see kernels.AttentionParams): query t at position positions[t]
// attends to the keys at positions max(0, pos-Window+1)..pos (Window 0: 0..pos),
// read from slots pos mod Capacity; query head h uses KV head
// h/(Heads/KVHeads). Scores are q·k·Scale; the softmax is in f32 with a
// float64 sum, and the outputs accumulate in float64. It is an error if a needed position cannot be in the cache:
// more positions than Capacity, or a slot that a later position of the same
// call has taken (a prefill chunk of T queries on a sliding layer needs
// Capacity ≥ Window+T-1).
func (b *Backend) Attention(out, q, kCache, vCache, positions kernels.Tensor, p kernels.AttentionParams) error {
	if b.closed {
		return errClosed
	}
	if p.Heads <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 || p.Heads%p.KVHeads != 0 {
		return fmt.Errorf("cpu: Attention: %d heads, %d KV heads of dim %d (heads must be a positive multiple of KV heads)", p.Heads, p.KVHeads, p.HeadDim)
	}
	if p.Window < 0 {
		return fmt.Errorf("cpu: Attention: window %d is negative", p.Window)
	}
	if math.IsNaN(float64(p.Scale)) || math.IsInf(float64(p.Scale), 0) {
		return fmt.Errorf("cpu: Attention: scale %v is not finite", p.Scale)
	}
	pos, err := b.ints(positions, "Attention: positions")
	if err != nil {
		return err
	}
	t := len(pos)
	qw := p.Heads * p.HeadDim
	if q.Numel() != t*qw || q.Cols()%p.HeadDim != 0 {
		return fmt.Errorf("cpu: Attention: q %s should be [%d, %d] (%d heads of %d)", q, t, qw, p.Heads, p.HeadDim)
	}
	if out.Numel() != t*qw || out.Cols()%p.HeadDim != 0 {
		return fmt.Errorf("cpu: Attention: out %s should be [%d, %d]", out, t, qw)
	}
	kw := p.KVHeads * p.HeadDim
	kc, err := b.cache(kCache, "Attention: key cache", kw, false)
	if err != nil {
		return err
	}
	vc, err := b.cache(vCache, "Attention: value cache", kw, false)
	if err != nil {
		return err
	}
	if kc.slots != vc.slots {
		return fmt.Errorf("cpu: Attention: key cache %s and value cache %s differ in capacity", kCache, vCache)
	}
	if err := checkRing(pos, p.Window, kc.slots); err != nil {
		return err
	}
	qv, err := b.in(q, "Attention: q", slotX)
	if err != nil {
		return err
	}
	ov, err := b.out(out, "Attention: out", slotY)
	if err != nil {
		return err
	}
	for i := range b.ws {
		b.ws[i].score = grow(b.ws[i].score, max(attnQueries*kc.slots, len(b.ws[i].score)))
		b.ws[i].acc = grow64(b.ws[i].acc, max(attnQueries*p.HeadDim, len(b.ws[i].acc)))
		b.ws[i].q64 = grow64(b.ws[i].q64, max(attnQueries*p.HeadDim, len(b.ws[i].q64)))
	}
	j := &b.at
	*j = attnJob{b: b, p: p, q: qv, out: ov, pos: pos, k: kc, v: vc}
	if kc.dt == dtype.F16 || vc.dt == dtype.F16 {
		j.f16 = f16Table()
	}
	total := (t + attnQueries - 1) / attnQueries * p.Heads
	b.pool.parallel(total, b.pool.chunkFor(total, 1), j)
	*j = attnJob{}
	b.flush(out, ov)
	return nil
}

// checkRing verifies that every key a query needs can be in a cache of the
// given capacity: at most capacity positions per query, and none of them
// overwritten by a later position of the same call (every position of the call
// has been stored, since each query attends to its own key).
func checkRing(pos []int32, window, capacity int) error {
	maxPos := 0
	for i, ps := range pos {
		if ps < 0 {
			return fmt.Errorf("cpu: Attention: positions[%d] = %d is negative", i, ps)
		}
		maxPos = max(maxPos, int(ps))
	}
	for i, ps := range pos {
		last, first := int(ps), 0
		if window > 0 {
			first = max(0, last-window+1)
		}
		if n := last - first + 1; n > capacity {
			return fmt.Errorf("cpu: Attention: query %d at position %d needs the keys of positions %d..%d (%d) but the cache holds %d",
				i, ps, first, last, n, capacity)
		}
		if maxPos-first < capacity {
			continue // no position of this call can have reached these slots
		}
		for _, later := range pos {
			// The largest position ≤ last that shares a slot with later.
			over := int(later) - (int(later)-last+capacity-1)/capacity*capacity
			if int(later) > last && over >= first {
				return fmt.Errorf("cpu: Attention: query %d at position %d needs the key of position %d, whose cache slot holds position %d of the same call "+
					"(a ring of %d slots; attend in smaller chunks or give the cache at least Window+T-1 slots)", i, ps, over, later, capacity)
			}
		}
	}
	return nil
}

// dotBF16 returns Σ w[i]·x[i] in f32 for a bfloat16 row (a bf16 KV cache).
func dotBF16(w []uint16, x []float32) float32 {
	x = x[:len(w)]
	var s0, s1 float32
	i := 0
	for ; i+2 <= len(w); i += 2 {
		s0 += math.Float32frombits(uint32(w[i])<<16) * x[i]
		s1 += math.Float32frombits(uint32(w[i+1])<<16) * x[i+1]
	}
	if i < len(w) {
		s0 += math.Float32frombits(uint32(w[i])<<16) * x[i]
	}
	return s0 + s1
}

// dotF16 is dotBF16 for an IEEE half row, tab being f16Table().
func dotF16(w []uint16, x []float32, tab *[1 << 16]float32) float32 {
	x = x[:len(w)]
	var s0, s1 float32
	i := 0
	for ; i+2 <= len(w); i += 2 {
		s0 += tab[w[i]] * x[i]
		s1 += tab[w[i+1]] * x[i+1]
	}
	if i < len(w) {
		s0 += tab[w[i]] * x[i]
	}
	return s0 + s1
}
