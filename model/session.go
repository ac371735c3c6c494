package model

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/gemmoe/gemmoe/attention"
	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/moe"
)

// Session is one sequence's state: its KV caches, its position and the
// activations of a step. A session is used by one goroutine at a time; a
// model serves any number of sessions.
type Session struct {
	m      *Model
	caches []*attention.Cache // per layer; shared layers point at their donor's
	own    []*attention.Cache
	attn   *attention.Scratch
	moe    *moe.Scratch
	tokens []int32 // what the caches hold, position by position

	h, x, a, g, u, d, e kernels.Tensor // [Chunk, ...] activations
	ple, pleTok, pleG   kernels.Tensor // per-layer inputs (PLE models): [Chunk, layers·P], [Chunk, layers·P], [Chunk, P]
	pleI, pleRows       kernels.Tensor // layer i's inputs of a prompt's tokens [Chunk, P]; I32 [layers, Chunk]: their rows in ple
	pleRowsT            int            // the tokens pleRows was written for (0: none)
	final, logits       kernels.Tensor // [1, hidden], [1, vocab]
	ids, pos            kernels.Tensor // I32 [Chunk]
	host                []byte         // reused host staging
	stage               [2][]byte      // staging for ids and positions
	posv                []int32        // positions of the current step
	shape1, shape2      []int          // reused shape storage for the ids and positions views
	qkvNormed           bool           // s.e holds the next layer's normed q/k/v input (layerFused)
	graph               kernels.Graph  // the recorded decode step (Capturer backends)
	graphKey, keyBuf    []int          // cache capacities the graph was recorded with

	// The allocation-free path of Generate (forwardLast): logits are read
	// into out, which the returned slice aliases until the next call.
	out   []float32
	reuse bool
	last  []float32
	keep  func(int, []float32) // s.keepLast, bound once
	tok1  [1]int32

	// With top > 0 (Generate on a kernels.Selector backend) forwardLast
	// reads only the top greatest logits, picked on the device into topBuf
	// (values, then ids), into topVals and topIDs.
	top     int
	topBuf  kernels.Tensor // I32 [2·kernels.MaxTopK]
	topRaw  []byte
	topVals []float32
	topIDs  []int32
}

// NewSession makes an empty session with its caches and scratch.
func (m *Model) NewSession() (*Session, error) {
	s := &Session{m: m}
	if err := s.alloc(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Session) alloc() error {
	m, b, cfg := s.m, s.m.Backend, s.m.Config
	C, H := m.opts.Chunk, cfg.HiddenSize
	s.keep = s.keepLast
	s.posv = make([]int32, C)
	s.shape1, s.shape2 = make([]int, 1), make([]int, 1)
	s.caches = make([]*attention.Cache, len(m.layers))
	specs := make([]attention.Spec, len(m.layers))
	for i, l := range m.layers {
		specs[i] = l.spec
		if l.cfg.KVSharedOf >= 0 {
			s.caches[i] = s.caches[l.cfg.KVSharedOf]
			continue
		}
		width := l.cfg.KVHeads * l.cfg.HeadDim
		var c *attention.Cache
		var err error
		if l.cfg.Type == loader.Sliding {
			c, err = attention.NewSlidingCache(b, l.cfg.Window, C, width)
		} else {
			c, err = attention.NewFullCache(b, m.opts.ContextLength, m.opts.CacheGrow, width)
		}
		if err != nil {
			return err
		}
		s.caches[i], s.own = c, append(s.own, c)
	}
	var err error
	if s.attn, err = attention.NewScratch(b, C, specs); err != nil {
		return err
	}
	if cfg.EnableMoE {
		if s.moe, err = moe.NewScratch(b, C, m.moeSpec); err != nil {
			return err
		}
	}
	width := 0
	for _, l := range m.layers {
		width = max(width, l.cfg.MLPWidth)
	}
	dt := b.ActivationDType()
	type scratch struct {
		dst   *kernels.Tensor
		dt    dtype.DType
		shape []int
	}
	allocs := []scratch{
		{&s.h, dt, []int{C, H}}, {&s.x, dt, []int{C, H}}, {&s.a, dt, []int{C, H}},
		{&s.g, dt, []int{C, width}}, {&s.u, dt, []int{C, width}}, {&s.d, dt, []int{C, H}}, {&s.e, dt, []int{C, H}},
		{&s.final, dt, []int{1, H}}, {&s.logits, dtype.F32, []int{1, cfg.VocabSize}}, // f32: read without conversion
		{&s.ids, dtype.I32, []int{C}}, {&s.pos, dtype.I32, []int{C}},
	}
	if P := cfg.PLEDim; P > 0 {
		L := cfg.NumLayers
		allocs = append(allocs, scratch{&s.ple, dt, []int{C, L * P}}, scratch{&s.pleTok, dt, []int{C, L * P}},
			scratch{&s.pleG, dt, []int{C, P}}, scratch{&s.pleI, dt, []int{C, P}}, scratch{&s.pleRows, dtype.I32, []int{L, C}})
	}
	for _, a := range allocs {
		if *a.dst, err = b.Alloc(a.dt, a.shape...); err != nil {
			return fmt.Errorf("session: %w", err)
		}
	}
	return nil
}

// Close releases the session's caches and scratch.
func (s *Session) Close() {
	b := s.m.Backend
	if s.graph != nil {
		s.graph.Close()
		s.graph = nil
	}
	for _, c := range s.own {
		c.Free(b)
	}
	s.own, s.caches = nil, nil
	if s.attn != nil {
		s.attn.Free(b)
		s.attn = nil
	}
	if s.moe != nil {
		s.moe.Free(b)
		s.moe = nil
	}
	for _, t := range []*kernels.Tensor{&s.h, &s.x, &s.a, &s.g, &s.u, &s.d, &s.e, &s.ple, &s.pleTok, &s.pleG, &s.pleI, &s.pleRows,
		&s.final, &s.logits, &s.ids, &s.pos, &s.topBuf} {
		if !t.IsZero() {
			b.Free(*t)
			*t = kernels.Tensor{}
		}
	}
}

// Len is the number of positions the session holds.
func (s *Session) Len() int { return len(s.tokens) }

// Tokens returns the tokens the session holds (do not modify).
func (s *Session) Tokens() []int32 { return s.tokens }

// CacheBytes is the device memory the session's KV caches hold now.
func (s *Session) CacheBytes() int64 {
	var n int64
	for _, c := range s.own {
		n += c.Bytes()
	}
	return n
}

// SlidingCacheSlots returns the slot count of the first sliding layer's ring
// (0 if the model has none).
func (s *Session) SlidingCacheSlots() int {
	for i, l := range s.m.layers {
		if l.cfg.Type == loader.Sliding {
			return s.caches[i].Capacity
		}
	}
	return 0
}

// Truncate drops positions from n on, so the next tokens are written at n.
// It fails when a sliding layer's ring no longer holds what position n
// needs (the caller then starts a new session).
func (s *Session) Truncate(n int) error {
	if n < 0 || n > len(s.tokens) {
		return fmt.Errorf("truncate to %d: the session holds %d positions", n, len(s.tokens))
	}
	if len(s.tokens)-n > s.m.opts.Chunk {
		for _, l := range s.m.layers {
			if l.cfg.Type == loader.Sliding {
				return fmt.Errorf("truncate to %d: the sliding caches no longer hold the window before it", n)
			}
		}
	}
	s.tokens = s.tokens[:n]
	return nil
}

// Trace receives intermediate values of a forward pass (for tests and
// debugging): the residual after the embedding (layer -1) and after each
// layer, and each MoE layer's router choice.
type Trace struct {
	Hidden func(layer int, h []float32)              // h: [T, hidden] row-major
	Router func(layer int, ids []int32, w []float32) // [T, k]
}

// Forward feeds tokens at the session's next positions and returns the
// logits of the last one. Long inputs run in chunks.
func (s *Session) Forward(ctx context.Context, tokens []int32) ([]float32, error) {
	var last []float32
	err := s.forward(ctx, tokens, nil, func(_ int, l []float32) { last = l }, true)
	return last, err
}

// ForwardInto is Forward with the logits read into dst when it has room for
// them (else into a new slice, returned): a decode loop that passes the
// returned slice back in allocates nothing per token.
func (s *Session) ForwardInto(ctx context.Context, tokens []int32, dst []float32) ([]float32, error) {
	own := s.out
	s.out = dst
	logits, err := s.forwardLast(ctx, tokens)
	s.out = own
	return logits, err
}

// forwardLast is Forward for Generate: the logits are read into a buffer of
// the session, valid until the next call, so that a decode step allocates
// nothing.
func (s *Session) forwardLast(ctx context.Context, tokens []int32) ([]float32, error) {
	s.reuse, s.last = true, nil
	err := s.forward(ctx, tokens, nil, s.keep, true)
	s.reuse = false
	return s.last, err
}

func (s *Session) keepLast(_ int, l []float32) { s.last = l }

// ForwardAll feeds tokens and returns the logits of every one ([T][vocab]);
// trace may be nil.
func (s *Session) ForwardAll(ctx context.Context, tokens []int32, trace *Trace) ([][]float32, error) {
	out := make([][]float32, 0, len(tokens))
	err := s.forward(ctx, tokens, trace, func(_ int, l []float32) { out = append(out, l) }, false)
	return out, err
}

func (s *Session) forward(ctx context.Context, tokens []int32, trace *Trace, emit func(int, []float32), lastOnly bool) error {
	if len(tokens) == 0 {
		return fmt.Errorf("forward: no tokens")
	}
	if end := len(s.tokens) + len(tokens); end > s.m.opts.ContextLength {
		return fmt.Errorf("forward: %d positions exceed the context length %d", end, s.m.opts.ContextLength)
	}
	for _, id := range tokens {
		if id < 0 || int(id) >= s.m.Config.VocabSize {
			return fmt.Errorf("forward: token id %d is outside the vocabulary [0, %d)", id, s.m.Config.VocabSize)
		}
	}
	C := s.m.opts.Chunk
	for start := 0; start < len(tokens); start += C {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := tokens[start:min(start+C, len(tokens))]
		final := start+len(chunk) == len(tokens)
		if err := s.step(chunk, trace, emit, lastOnly && !final, lastOnly); err != nil {
			return err
		}
	}
	return nil
}

// step runs one chunk through the model. skipLogits: no logits wanted for
// this chunk; lastOnly: only the chunk's last row's logits. A one-token
// step without a trace is recorded once as a graph on backends that can
// (CUDA) and replayed afterwards, so decode costs one launch per token.
func (s *Session) step(tokens []int32, trace *Trace, emit func(int, []float32), skipLogits, lastOnly bool) error {
	m := s.m
	m.mu <- struct{}{}
	defer func() { <-m.mu }()
	b, cfg := m.Backend, m.Config
	T, H := len(tokens), cfg.HiddenSize
	p0 := len(s.tokens)
	for i := range T {
		s.posv[i] = int32(p0 + i)
	}
	ids, pos := s.ids, s.pos
	ids.Shape, pos.Shape = s.shape1[:1], s.shape2[:1]
	ids.Shape[0], pos.Shape[0] = T, T
	if err := b.Upload(ids, s.i32Bytes(0, tokens)); err != nil {
		return err
	}
	if err := b.Upload(pos, s.i32Bytes(1, s.posv[:T])); err != nil {
		return err
	}
	for _, c := range s.own {
		if err := c.Reserve(b, p0+T-1); err != nil {
			return err
		}
	}
	s.tokens = append(s.tokens, tokens...)
	if T == 1 && trace == nil && !skipLogits {
		if err := s.decode(ids, pos); err != nil {
			s.tokens = s.tokens[:p0]
			return err
		}
		v, err := s.readLogits()
		if err != nil {
			return err
		}
		emit(p0, v)
		return nil
	}
	h := s.h
	h.Shape = kernels.Shape(T, H)
	if err := s.layers(h, ids, pos, trace); err != nil {
		s.tokens = s.tokens[:p0]
		return err
	}
	if skipLogits {
		return b.Sync()
	}
	first := 0
	if lastOnly {
		first = T - 1
	}
	for r := first; r < T; r++ {
		if err := s.head(h, r); err != nil {
			return err
		}
		v, err := s.readLogits()
		if err != nil {
			return err
		}
		emit(p0+r, v)
	}
	return nil
}

// decode runs one token (ids and positions already uploaded) through the
// layers and the head, replaying a recorded graph where the backend can.
func (s *Session) decode(ids, pos kernels.Tensor) error {
	h := s.h
	h.Shape = kernels.Shape(1, s.m.Config.HiddenSize)
	run := func() error {
		if err := s.layers(h, ids, pos, nil); err != nil {
			return err
		}
		return s.head(h, 0)
	}
	capt, ok := s.m.Backend.(kernels.Capturer)
	if !ok || s.m.opts.NoGraphs {
		return run()
	}
	key := s.cacheShape()
	if s.graph == nil || !slices.Equal(key, s.graphKey) {
		if s.graph != nil {
			s.graph.Close()
			s.graph = nil
		}
		if err := capt.BeginCapture(); err != nil {
			return err
		}
		err := run()
		g, gerr := capt.EndCapture()
		if err != nil {
			if gerr == nil {
				g.Close()
			}
			return err
		}
		if gerr != nil {
			return gerr
		}
		s.graph, s.graphKey = g, slices.Clone(key)
	}
	return s.graph.Launch()
}

// cacheShape lists the caches' capacities (in a buffer of the session,
// valid until the next call): a recorded graph is valid while they stay the
// same.
func (s *Session) cacheShape() []int {
	key := s.keyBuf[:0]
	for _, c := range s.own {
		key = append(key, c.Capacity)
	}
	s.keyBuf = key
	return key
}

// layers runs the embedding (and per-layer inputs) and every layer on h [T, hidden].
func (s *Session) layers(h, ids, pos kernels.Tensor, trace *Trace) error {
	m := s.m
	b, cfg := m.Backend, m.Config
	T := h.Rows()
	if err := b.Embed(h, &m.embed, ids, float32(math.Sqrt(float64(cfg.HiddenSize)))); err != nil {
		return fmt.Errorf("embed: %w", err)
	}
	if cfg.PLEDim > 0 {
		if err := s.perLayerInputs(h, ids); err != nil {
			return err
		}
	}
	if trace != nil && trace.Hidden != nil {
		v, err := s.read(h)
		if err != nil {
			return err
		}
		trace.Hidden(-1, v)
	}
	for i := range m.layers {
		if err := s.layer(i, T, h, pos, trace); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if trace != nil && trace.Hidden != nil {
			v, err := s.read(h)
			if err != nil {
				return err
			}
			trace.Hidden(i, v)
		}
	}
	return nil
}

// head computes the logits of row r of h into s.logits: final norm, the
// tied (or separate) LM head, softcap.
func (s *Session) head(h kernels.Tensor, r int) error {
	if f, ok := s.fuser(); ok {
		return s.headFused(f, h, r)
	}
	m := s.m
	b, cfg := m.Backend, m.Config
	row := h
	if h.Rows() != 1 || r != 0 {
		var err error
		if row, err = h.RowRange(r, r+1); err != nil {
			return err
		}
	}
	if err := b.RMSNorm(s.final, row, m.norm, float32(cfg.RMSNormEps)); err != nil {
		return fmt.Errorf("final norm: %w", err)
	}
	if err := b.MatMul(s.logits, s.final, &m.lmHead); err != nil {
		return fmt.Errorf("lm head: %w", err)
	}
	if c := cfg.FinalLogitSoftcap; c > 0 {
		if err := b.Softcap(s.logits, s.logits, float32(c)); err != nil {
			return fmt.Errorf("softcap: %w", err)
		}
	}
	return nil
}

func (s *Session) layer(i, T int, h, pos kernels.Tensor, trace *Trace) error {
	if f, ok := s.fuser(); ok {
		return s.layerFused(f, i, T, h, pos, trace)
	}
	m := s.m
	b, cfg := m.Backend, m.Config
	l := &m.layers[i]
	H := cfg.HiddenSize
	eps := float32(cfg.RMSNormEps)
	rows := func(t kernels.Tensor, cols int) kernels.Tensor { t.Shape = kernels.Shape(T, cols); return t }
	x, a, d := rows(s.x, H), rows(s.a, H), rows(s.d, H)
	if err := b.RMSNorm(x, h, l.inputNorm, eps); err != nil {
		return fmt.Errorf("input_layernorm: %w", err)
	}
	if err := attention.Forward(b, a, x, pos, &l.attn, l.spec, s.caches[i], s.attn); err != nil {
		return err
	}
	if err := b.RMSNorm(a, a, l.postAttnNorm, eps); err != nil {
		return fmt.Errorf("post_attention_layernorm: %w", err)
	}
	if err := b.Add(h, h, a); err != nil {
		return err
	}
	// Dense GeGLU MLP.
	W := l.cfg.MLPWidth
	g, u := rows(s.g, W), rows(s.u, W)
	if err := b.RMSNorm(x, h, l.preFFNorm, eps); err != nil {
		return fmt.Errorf("pre_feedforward_layernorm: %w", err)
	}
	if err := b.MatMul(g, x, &l.gate); err != nil {
		return fmt.Errorf("mlp gate: %w", err)
	}
	if err := b.MatMul(u, x, &l.up); err != nil {
		return fmt.Errorf("mlp up: %w", err)
	}
	if err := b.GeluTanhMul(g, g, u); err != nil {
		return err
	}
	if err := b.MatMul(d, g, &l.down); err != nil {
		return fmt.Errorf("mlp down: %w", err)
	}
	if l.moe != nil {
		if err := b.RMSNorm(d, d, l.postFFNorm1, eps); err != nil {
			return fmt.Errorf("post_feedforward_layernorm_1: %w", err)
		}
		e := rows(s.e, H)
		if err := moe.Forward(b, e, h, l.moe, m.moeSpec, s.moe); err != nil {
			return err
		}
		if trace != nil && trace.Router != nil {
			if err := s.traceRouter(i, T, trace); err != nil {
				return err
			}
		}
		if err := b.Add(d, d, e); err != nil {
			return err
		}
	}
	if err := b.RMSNorm(d, d, l.postFFNorm, eps); err != nil {
		return fmt.Errorf("post_feedforward_layernorm: %w", err)
	}
	if err := b.Add(h, h, d); err != nil {
		return err
	}
	if cfg.PLEDim > 0 {
		if err := s.perLayerStep(i, h); err != nil {
			return err
		}
	}
	if l.scalar != 1 {
		if err := b.Scale(h, h, l.scalar); err != nil {
			return err
		}
	}
	return nil
}

// perLayerInputs computes the per-layer inputs of the step's T tokens
// (ple [T, layers·P], token-major): ple = (norm(proj(e)·hidden^-½) +
// E_pl[id]·√P)·2^-½, the norm over each layer's P values.
func (s *Session) perLayerInputs(e, ids kernels.Tensor) error {
	m, b, cfg := s.m, s.m.Backend, s.m.Config
	L, P, T := cfg.NumLayers, cfg.PLEDim, e.Rows()
	flat := func(t kernels.Tensor) kernels.Tensor { t.Shape = kernels.Shape(T, L*P); return t }
	ple, tok := flat(s.ple), flat(s.pleTok)
	byLayer := s.ple // [T·L, P]: one row per token and layer
	byLayer.Shape = kernels.Shape(T*L, P)
	if err := b.Embed(tok, &m.pleEmbed, ids, float32(math.Sqrt(float64(P)))); err != nil {
		return fmt.Errorf("per-layer embedding: %w", err)
	}
	if err := b.MatMul(ple, e, &m.pleModelProj); err != nil {
		return fmt.Errorf("per_layer_model_projection: %w", err)
	}
	if err := b.Scale(ple, ple, float32(1/math.Sqrt(float64(cfg.HiddenSize)))); err != nil {
		return err
	}
	if err := b.RMSNorm(byLayer, byLayer, m.pleProjNorm, float32(cfg.RMSNormEps)); err != nil {
		return fmt.Errorf("per_layer_projection_norm: %w", err)
	}
	if err := b.Add(ple, ple, tok); err != nil {
		return err
	}
	if err := b.Scale(ple, ple, float32(1/math.Sqrt2)); err != nil {
		return err
	}
	if T == 1 || s.pleRowsT == T {
		return nil
	}
	// Row t·L + i of byLayer is layer i's input of token t: perLayerStep
	// gathers layer i's rows of all the tokens with Embed, by these ids.
	rows := make([]byte, 0, 4*L*T)
	for i := range L {
		for t := range T {
			rows = binary.LittleEndian.AppendUint32(rows, uint32(t*L+i))
		}
	}
	r := s.pleRows
	r.Shape = kernels.Shape(L, T)
	if err := b.Upload(r, rows); err != nil {
		return err
	}
	s.pleRowsT = T
	return nil
}

// perLayerStep adds layer i's per-layer inputs to h [T, hidden]:
// h += norm(proj(gelu_tanh(gate(h))·ple[i])).
func (s *Session) perLayerStep(i int, h kernels.Tensor) error {
	b, l, cfg := s.m.Backend, &s.m.layers[i], s.m.Config
	L, P, T := cfg.NumLayers, cfg.PLEDim, h.Rows()
	if i < 0 || i >= L {
		return fmt.Errorf("per-layer input %d of %d", i, L)
	}
	var pi kernels.Tensor // layer i's inputs [T, P]
	if T == 1 {
		pi = s.ple // row i of the token's [L, P]
		pi.Offset += int64(i) * int64(P) * int64(pi.DType.Size())
		pi.Shape = kernels.Shape(1, P)
	} else {
		pi = s.pleI
		pi.Shape = kernels.Shape(T, P)
		table := kernels.Weight{Data: s.ple, N: T * L, K: P}
		table.Data.Shape = kernels.Shape(T*L, P)
		rows := s.pleRows // [L, T] as perLayerInputs wrote it
		rows.Shape = kernels.Shape(L, T)
		ids, err := rows.RowRange(i, i+1)
		if err != nil {
			return err
		}
		ids.Shape = ids.Shape[1:]
		if err := b.Embed(pi, &table, ids, 1); err != nil {
			return fmt.Errorf("per-layer input %d: %w", i, err)
		}
	}
	g := s.pleG
	g.Shape = kernels.Shape(T, P)
	if err := b.MatMul(g, h, &l.pleGate); err != nil {
		return fmt.Errorf("per_layer_input_gate: %w", err)
	}
	if err := b.GeluTanhMul(g, g, pi); err != nil {
		return err
	}
	e := s.e
	e.Shape = kernels.Shape(T, cfg.HiddenSize)
	if err := b.MatMul(e, g, &l.pleProj); err != nil {
		return fmt.Errorf("per_layer_projection: %w", err)
	}
	if err := b.RMSNorm(e, e, l.pleNorm, float32(cfg.RMSNormEps)); err != nil {
		return fmt.Errorf("post_per_layer_input_norm: %w", err)
	}
	return b.Add(h, h, e)
}

func (s *Session) traceRouter(i, T int, trace *Trace) error {
	k := s.m.moeSpec.TopK
	ids, w := s.moeIDs(T, k)
	raw := make([]byte, T*k*4)
	if err := s.m.Backend.Download(raw, ids); err != nil {
		return err
	}
	idv := make([]int32, T*k)
	for j := range idv {
		idv[j] = int32(binary.LittleEndian.Uint32(raw[4*j:]))
	}
	if err := s.m.Backend.Download(raw, w); err != nil {
		return err
	}
	wv := make([]float32, T*k)
	for j := range wv {
		wv[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
	}
	trace.Router(i, idv, wv)
	return nil
}

// readLogits reads s.logits: into the session's buffer on the
// allocation-free path (forwardLast; only the s.top best with s.top > 0),
// else into a new slice.
func (s *Session) readLogits() ([]float32, error) {
	if s.reuse && s.top > 0 {
		return s.readTop()
	}
	if !s.reuse {
		return s.read(s.logits)
	}
	n := s.logits.Numel()
	if cap(s.out) < n {
		s.out = make([]float32, n)
	}
	s.out = s.out[:n]
	return s.readInto(s.out, s.logits)
}

// readTop picks the s.top greatest logits on the backend
// (kernels.Selector), best first, and reads them into s.topVals and their
// token ids into s.topIDs.
func (s *Session) readTop() ([]float32, error) {
	b, n := s.m.Backend, s.top
	sel, ok := b.(kernels.Selector)
	if !ok || n > kernels.MaxTopK {
		return nil, fmt.Errorf("read: %d best logits of a backend that cannot pick them", n)
	}
	if s.topBuf.IsZero() {
		t, err := b.Alloc(dtype.I32, 2*kernels.MaxTopK)
		if err != nil {
			return nil, err
		}
		s.topBuf = t
	}
	vals, ids, both := s.topBuf, s.topBuf, s.topBuf
	vals.DType, vals.Shape = dtype.F32, kernels.Shape(1, n)
	ids.Offset, ids.Shape = ids.Offset+int64(4*n), kernels.Shape(1, n)
	both.Shape = kernels.Shape(2 * n)
	if err := sel.TopK(vals, ids, s.logits, n); err != nil {
		return nil, err
	}
	if cap(s.topRaw) < 8*n {
		s.topRaw = make([]byte, 8*kernels.MaxTopK)
		s.topVals = make([]float32, kernels.MaxTopK)
		s.topIDs = make([]int32, kernels.MaxTopK)
	}
	raw := s.topRaw[:8*n]
	if err := b.Download(raw, both); err != nil {
		return nil, err
	}
	s.topVals, s.topIDs = s.topVals[:n], s.topIDs[:n]
	for i := range n {
		s.topVals[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		s.topIDs[i] = int32(binary.LittleEndian.Uint32(raw[4*(n+i):]))
	}
	return s.topVals, nil
}

// read downloads a tensor as float32 values.
func (s *Session) read(t kernels.Tensor) ([]float32, error) {
	return s.readInto(make([]float32, t.Numel()), t)
}

// readInto downloads a tensor as float32 values into out (len t.Numel()).
func (s *Session) readInto(out []float32, t kernels.Tensor) ([]float32, error) {
	n := int(t.Bytes())
	if t.DType == dtype.F32 && n > 0 {
		// Little-endian host (see DESIGN.md): the bytes are the values.
		if err := s.m.Backend.Download(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), n), t); err != nil {
			return nil, err
		}
		return out, nil
	}
	if cap(s.host) < n {
		s.host = make([]byte, n)
	}
	buf := s.host[:n]
	if err := s.m.Backend.Download(buf, t); err != nil {
		return nil, err
	}
	switch t.DType {
	case dtype.F32:
	case dtype.BF16:
		for i := range out {
			out[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(buf[2*i:]))
		}
	case dtype.F16:
		for i := range out {
			out[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(buf[2*i:]))
		}
	default:
		return nil, fmt.Errorf("read: %s tensor is not float", t.DType)
	}
	return out, nil
}

// i32Bytes encodes v little-endian into the session's staging buffer slot.
func (s *Session) i32Bytes(slot int, v []int32) []byte {
	buf := s.stage[slot][:0]
	for _, x := range v {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(x))
	}
	s.stage[slot] = buf
	return buf
}

func (s *Session) moeIDs(T, k int) (ids, weights kernels.Tensor) { return s.moe.Choice(T, k) }
