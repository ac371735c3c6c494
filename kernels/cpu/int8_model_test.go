package cpu_test

import (
	"context"
	"encoding/binary"
	"github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// TestDemoPerplexity measures the kernels that sum in f32, the int24- and
// the int8-activation paths on the demo model
// (demo-build/model-4bit, see tools/demo/README.md; untracked, so the test
// skips without it): the held-out perplexity over GEMMOE_DEMO_WINDOWS
// windows of 512 tokens (spread over the held-out set; unset: the test
// skips, it takes about a second per window and path on two cores) must be
// within 0.5% of the float64 kernels' (WithFloat64Sums).
func TestDemoPerplexity(t *testing.T) {
	dir := filepath.Join("..", "..", "demo-build")
	n, _ := strconv.Atoi(os.Getenv("GEMMOE_DEMO_WINDOWS"))
	if n <= 0 {
		t.Skip("set GEMMOE_DEMO_WINDOWS to the number of held-out windows to evaluate")
	}
	if len(cpu.KernelSets()) == 0 {
		t.Skip("no SIMD kernels on this CPU")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "heldout.u16"))
	if err != nil {
		t.Skipf("no demo model data: %v", err)
	}
	toks := make([]int32, len(raw)/2)
	for i := range toks {
		toks[i] = int32(binary.LittleEndian.Uint16(raw[2*i:]))
	}
	const win = 512
	total := (len(toks) - 1) / win
	n = min(n, total)
	ppl := func(opts ...cpu.Option) float64 {
		src, err := loader.Open(filepath.Join(dir, "model-4bit"))
		if err != nil {
			t.Skipf("no demo model: %v", err)
		}
		b := cpu.New(opts...)
		defer b.Close()
		m, err := model.New(src, b, model.Options{Chunk: win, ContextLength: win + 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var nll float64
		var count int
		for w := range n {
			i := w * (total / n)
			in, tgt := toks[i*win:(i+1)*win], toks[i*win+1:(i+1)*win+1]
			s, err := m.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			logits, err := s.ForwardAll(context.Background(), in, nil)
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			for r, l := range logits {
				nll += fixture.NLL(l, tgt[r])
				count++
			}
		}
		return math.Exp(nll / float64(count))
	}
	exact := ppl(cpu.WithFloat64Sums(true), cpu.WithInt8Activations(false))
	for _, c := range []struct {
		name string
		opts []cpu.Option
	}{
		{"the f32 sums", []cpu.Option{cpu.WithFloat64Sums(false), cpu.WithInt8Activations(false), cpu.WithInt24Activations(false)}},
		{"int24 activations", []cpu.Option{cpu.WithFloat64Sums(false), cpu.WithInt8Activations(false), cpu.WithInt24Activations(true)}},
		{"int8 activations", []cpu.Option{cpu.WithInt8Activations(true)}},
	} {
		fast := ppl(c.opts...)
		rel := fast/exact - 1
		t.Logf("%d windows of %d tokens: perplexity %.4f with float64 sums, %.4f with %s (%+.4f%%)", n, win, exact, fast, c.name, 100*rel)
		if math.Abs(rel) > 0.005 {
			t.Errorf("%s move the perplexity by %+.3f%% (> 0.5%%)", c.name, 100*rel)
		}
	}
}
