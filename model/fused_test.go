package model_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// sequential is kernels.Unfused with kernels.Concurrent: it runs a Side at
// once (a valid order of two independent sequences) and checks that every
// Side is joined before the next.
type sequential struct {
	kernels.Unfused
	open         bool
	sides, joins int
}

func (q *sequential) Side(f func() error) error {
	if q.open {
		return fmt.Errorf("Side before the Join of the one before")
	}
	q.open = true
	q.sides++
	return f()
}

func (q *sequential) Join() error {
	if q.open {
		q.open = false
		q.joins++
	}
	return nil
}

// TestFusedPath runs each fixture through the fused code path
// (kernels.Fuser) with the reference fuser kernels.Unfused on the CPU, once
// also with kernels.Concurrent: the logits of a chunked prefill (with
// router traces) and of one-token decode steps must equal the plain path's
// bit for bit, and greedy decoding must give transformers' tokens.
func TestFusedPath(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			ref := readReference(t, name)
			var conc *sequential
			run := func(fused, concurrent bool) (prefill, steps [][]float32, routed int, tokens []int32) {
				src, err := loader.Open(filepath.Join("..", "testdata", name))
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				var b kernels.Backend = cpu.New()
				defer b.Close()
				if fused {
					b = kernels.Unfused{Backend: b}
				}
				if concurrent {
					conc = &sequential{Unfused: kernels.Unfused{Backend: b}}
					b = conc
				}
				m, err := model.New(src, b, model.Options{Chunk: 8})
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				s, err := m.NewSession()
				if err != nil {
					t.Fatal(err)
				}
				trace := &model.Trace{Router: func(int, []int32, []float32) { routed++ }}
				if prefill, err = s.ForwardAll(context.Background(), ref.InputIDs[:20], trace); err != nil {
					t.Fatal(err)
				}
				for _, id := range ref.InputIDs[20:] {
					l, err := s.Forward(context.Background(), []int32{id})
					if err != nil {
						t.Fatal(err)
					}
					steps = append(steps, l)
				}
				s.Close()
				tokens = generated(t, m, ref.GreedyPrompt, model.GenerateOptions{MaxTokens: len(ref.GreedyTokens)})
				return prefill, steps, routed, tokens
			}
			p0, s0, r0, _ := run(false, false)
			p1, s1, r1, tok := run(true, false)
			p2, s2, _, _ := run(true, true)
			if r0 != r1 || r0 == 0 {
				t.Fatalf("router traces: %d plain, %d fused", r0, r1)
			}
			if conc.sides == 0 || conc.sides != conc.joins || conc.open {
				t.Fatalf("%d Sides, %d Joins (open %v)", conc.sides, conc.joins, conc.open)
			}
			for i, rows := range [][2][][]float32{{p0, p1}, {s0, s1}, {p0, p2}, {s0, s2}} {
				if len(rows[0]) != len(rows[1]) {
					t.Fatalf("%d rows plain, %d fused", len(rows[0]), len(rows[1]))
				}
				for r := range rows[0] {
					if d := maxAbsDiff(rows[0][r], rows[1][r]); d != 0 {
						t.Fatalf("part %d row %d: fused logits differ from plain by %.3g", i, r, d)
					}
				}
			}
			for i := range ref.GreedyTokens {
				if i >= len(tok) || tok[i] != ref.GreedyTokens[i] {
					t.Fatalf("greedy tokens %v, want %v", tok, ref.GreedyTokens)
				}
			}
		})
	}
}
