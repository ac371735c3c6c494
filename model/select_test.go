package model_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// selecting adds kernels.Selector to a backend by sorting each row on the
// host, by the interface's definition, and counts its calls: Generate's
// path for backends that pick the best logits where they lie, run on the
// CPU.
type selecting struct {
	kernels.Backend
	calls *int
}

func (b selecting) TopK(values, ids, x kernels.Tensor, k int) error {
	*b.calls++
	raw := make([]byte, x.Bytes())
	if err := b.Download(raw, x); err != nil {
		return err
	}
	rows, n := x.Rows(), x.Cols()
	vb, ib := make([]byte, 0, 4*rows*k), make([]byte, 0, 4*rows*k)
	for r := range rows {
		row := make([]float32, n)
		for i := range row {
			row[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*(r*n+i):]))
		}
		order := kernels.TopKOf(row, k)
		for _, i := range order {
			vb = binary.LittleEndian.AppendUint32(vb, math.Float32bits(row[i]))
			ib = binary.LittleEndian.AppendUint32(ib, uint32(i))
		}
	}
	if err := b.Upload(values, vb); err != nil {
		return err
	}
	return b.Upload(ids, ib)
}

// TestGenerateSelected: Generate from only the best logits (as on a
// kernels.Selector backend) must draw exactly the tokens it draws from all
// of them, for every sampler setting that allows it (greedy and top-k, with
// and without the repetition penalty, top-p and min-p after top-k, top-k
// beyond the first 64 candidates), and fall back to all logits otherwise.
func TestGenerateSelected(t *testing.T) {
	const name = "tiny-moe"
	src, err := loader.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ref := readReference(t, name)
	generate := func(b kernels.Backend, opts model.GenerateOptions) []int32 {
		m, err := model.New(src, b, model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		return generated(t, m, ref.GreedyPrompt, opts)
	}
	for _, c := range []struct {
		opts     model.SampleOptions
		selected bool
	}{
		{model.SampleOptions{}, true},
		{model.SampleOptions{RepeatPenalty: 1.3, RepeatWindow: 8}, true},
		{model.SampleOptions{Temperature: 0.9, TopK: 8, Seed: 3}, true},
		{model.SampleOptions{Temperature: 1.2, TopK: 40, TopP: 0.9, MinP: 0.02, Seed: 5}, true},
		{model.SampleOptions{Temperature: 1, TopK: 20, RepeatPenalty: 1.5, RepeatWindow: 16, Seed: 7}, true},
		{model.SampleOptions{Temperature: 1, TopK: 100, TopP: 0.95, Seed: 9}, true},
		{model.SampleOptions{Temperature: 1, TopP: 0.9, Seed: 11}, false},                   // no top-k: every logit counts
		{model.SampleOptions{Temperature: 1, TopK: 8, RepeatPenalty: 0.8, Seed: 13}, false}, // a penalty below 1 raises logits
	} {
		t.Run(fmt.Sprintf("%+v", c.opts), func(t *testing.T) {
			opts := model.GenerateOptions{SampleOptions: c.opts, MaxTokens: 24}
			plain := cpu.New()
			defer plain.Close()
			want := generate(plain, opts)
			calls := 0
			sel := cpu.New()
			defer sel.Close()
			got := generate(selecting{sel, &calls}, opts)
			if !slices.Equal(got, want) {
				t.Fatalf("tokens from the best logits %v, from all %v", got, want)
			}
			if c.selected != (calls > 0) {
				t.Fatalf("%d selections, want them: %v", calls, c.selected)
			}
		})
	}
}
