package model_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// recorder is the CPU backend with a recording mode, standing in for a
// CUDA-graph backend: between BeginCapture and EndCapture the ops are
// recorded, not run, and Launch replays them; host transfers are refused
// while recording, as CUDA refuses them.
type recorder struct {
	*cpu.Backend
	rec      *[]func() error
	captures int
	launches int
}

type replay struct {
	ops []func() error
	r   *recorder
}

func (g *replay) Launch() error {
	g.r.launches++
	for _, op := range g.ops {
		if err := op(); err != nil {
			return err
		}
	}
	return nil
}

func (g *replay) Close() error { g.ops = nil; return nil }

var errCapturing = errors.New("host transfer during capture")

func (r *recorder) BeginCapture() error { r.rec = new([]func() error); r.captures++; return nil }

func (r *recorder) EndCapture() (kernels.Graph, error) {
	ops := *r.rec
	r.rec = nil
	return &replay{ops: ops, r: r}, nil
}

func (r *recorder) do(op func() error) error {
	if r.rec != nil {
		*r.rec = append(*r.rec, op)
		return nil
	}
	return op()
}

func (r *recorder) Upload(t kernels.Tensor, b []byte) error {
	if r.rec != nil {
		return errCapturing
	}
	return r.Backend.Upload(t, b)
}

func (r *recorder) Download(b []byte, t kernels.Tensor) error {
	if r.rec != nil {
		return errCapturing
	}
	return r.Backend.Download(b, t)
}

func (r *recorder) Sync() error {
	if r.rec != nil {
		return errCapturing
	}
	return r.Backend.Sync()
}

func (r *recorder) MatMul(y, x kernels.Tensor, w *kernels.Weight) error {
	return r.do(func() error { return r.Backend.MatMul(y, x, w) })
}
func (r *recorder) MatMulExperts(y, x kernels.Tensor, w *kernels.Weight, ids kernels.Tensor) error {
	return r.do(func() error { return r.Backend.MatMulExperts(y, x, w, ids) })
}
func (r *recorder) MoECombine(y, x, w kernels.Tensor) error {
	return r.do(func() error { return r.Backend.MoECombine(y, x, w) })
}
func (r *recorder) Embed(y kernels.Tensor, t *kernels.Weight, ids kernels.Tensor, s float32) error {
	return r.do(func() error { return r.Backend.Embed(y, t, ids, s) })
}
func (r *recorder) RMSNorm(y, x, w kernels.Tensor, eps float32) error {
	return r.do(func() error { return r.Backend.RMSNorm(y, x, w, eps) })
}
func (r *recorder) RoPE(x, p, f kernels.Tensor) error {
	return r.do(func() error { return r.Backend.RoPE(x, p, f) })
}
func (r *recorder) GeluTanhMul(y, g, u kernels.Tensor) error {
	return r.do(func() error { return r.Backend.GeluTanhMul(y, g, u) })
}
func (r *recorder) Add(y, a, b kernels.Tensor) error {
	return r.do(func() error { return r.Backend.Add(y, a, b) })
}
func (r *recorder) Scale(y, x kernels.Tensor, s float32) error {
	return r.do(func() error { return r.Backend.Scale(y, x, s) })
}
func (r *recorder) Softcap(y, x kernels.Tensor, c float32) error {
	return r.do(func() error { return r.Backend.Softcap(y, x, c) })
}
func (r *recorder) Softmax(y, x kernels.Tensor) error {
	return r.do(func() error { return r.Backend.Softmax(y, x) })
}
func (r *recorder) RouterTopK(w, ids, l, s kernels.Tensor, k int) error {
	return r.do(func() error { return r.Backend.RouterTopK(w, ids, l, s, k) })
}
func (r *recorder) StoreKV(c, s, p kernels.Tensor) error {
	return r.do(func() error { return r.Backend.StoreKV(c, s, p) })
}
func (r *recorder) Attention(o, q, k, v, p kernels.Tensor, ap kernels.AttentionParams) error {
	return r.do(func() error { return r.Backend.Attention(o, q, k, v, p, ap) })
}

// TestGraphDecode decodes the reference greedy continuation with the decode
// step recorded once and replayed: the tokens must be transformers' tokens,
// and the graph must be re-recorded only when a full cache grows.
func TestGraphDecode(t *testing.T) {
	const name = "tiny-moe-mixed"
	ref := readReference(t, name)
	src, err := loader.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r := &recorder{Backend: cpu.New()}
	defer r.Close()
	m, err := model.New(src, r, model.Options{Chunk: 8, CacheGrow: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := generated(t, m, ref.GreedyPrompt, model.GenerateOptions{MaxTokens: len(ref.GreedyTokens)})
	for i := range ref.GreedyTokens {
		if i >= len(got) || got[i] != ref.GreedyTokens[i] {
			t.Fatalf("greedy tokens through the graph %v, want %v", got, ref.GreedyTokens)
		}
	}
	// 12 prompt tokens + 27 decode steps; the full cache grows at 32 positions.
	if r.captures != 2 || r.launches != len(ref.GreedyTokens)-1 {
		t.Fatalf("%d captures and %d launches, want 2 and %d", r.captures, r.launches, len(ref.GreedyTokens)-1)
	}
}
