package demo_test

import (
	"context"
	"encoding/binary"
	"github.com/gemmoe/gemmoe/internal/fixture"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/demo"
	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/model"
)

const randomModelPPL = 8584 // the same architecture at its random init, on all held-out tokens (tools/demo/README.md)

func setup(t *testing.T) (*model.Model, *fixture.DemoReference) {
	t.Helper()
	ref, err := fixture.LoadDemo()
	if err != nil {
		t.Fatal(err)
	}
	src, err := demo.Open()
	if err != nil {
		t.Fatal(err)
	}
	be := cpu.New()
	m, err := model.New(src, be, model.Options{Chunk: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); be.Close(); src.Close() })
	return m, ref
}

// TestHeldOutPerplexity is the whole-pipeline check: the embedded
// checkpoint through the loader, the 4-bit kernels and the model scores the
// first held-out windows of Go source (files not used in training) with the
// perplexity transformers recorded, far below a random model's.
func TestHeldOutPerplexity(t *testing.T) {
	m, ref := setup(t)
	raw, err := os.ReadFile("../testdata/demo/heldout-first-windows.u16")
	if err != nil {
		t.Fatal(err)
	}
	toks := make([]int32, len(raw)/2)
	for i := range toks {
		toks[i] = int32(binary.LittleEndian.Uint16(raw[2*i:]))
	}
	W, L := ref.FirstWindows.Windows, ref.FirstWindows.WindowLen
	var sum float64
	for w := range W {
		in := toks[w*L : (w+1)*L]
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		logits, err := s.ForwardAll(context.Background(), in, nil)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, row := range logits {
			sum += fixture.NLL(row, toks[w*L+i+1])
		}
	}
	ppl := math.Exp(sum / float64(W*L))
	t.Logf("held-out perplexity over %d windows: %.4f (transformers %.4f; all held-out %.3f; random model %d)",
		W, ppl, ref.FirstWindows.PPL, ref.All.PPL, randomModelPPL)
	if rel := math.Abs(ppl-ref.FirstWindows.PPL) / ref.FirstWindows.PPL; rel > 1e-3 {
		t.Fatalf("perplexity %.4f differs from the reference %.4f by %.2g relative", ppl, ref.FirstWindows.PPL, rel)
	}
	if ppl > randomModelPPL/100 {
		t.Fatalf("perplexity %.1f is not far below a random model's %d", ppl, randomModelPPL)
	}
}

// TestWindowAndGreedy compares per-token NLLs of a fixed held-out window and
// the greedy continuation (smallest top-2 margin 0.17) with transformers.
func TestWindowAndGreedy(t *testing.T) {
	m, ref := setup(t)
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	logits, err := s.ForwardAll(context.Background(), ref.Window.InputIDs, nil)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	for i, row := range logits {
		worst = math.Max(worst, math.Abs(fixture.NLL(row, ref.Window.TargetIDs[i])-ref.Window.NLL[i]))
	}
	t.Logf("max |NLL - reference| over %d tokens: %.3g", len(logits), worst)
	if worst > 5e-3 {
		t.Fatalf("per-token NLL differs from the reference by %.3g", worst)
	}
	s, err = m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []int32
	for tok, err := range s.Generate(context.Background(), ref.Greedy.Prompt, model.GenerateOptions{MaxTokens: len(ref.Greedy.Tokens)}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tok.ID)
	}
	for i := range ref.Greedy.Tokens {
		if i >= len(got) || got[i] != ref.Greedy.Tokens[i] {
			t.Fatalf("greedy tokens diverge at %d: got %v, want %v", i, got, ref.Greedy.Tokens)
		}
	}
}

// TestTokenizerOnHeldOutSource: the embedded tokenizer turns the first
// held-out file of this machine's Go source into the ids the model was
// evaluated on (made by Hugging Face tokenizers). It needs the Go release
// the data came from.
func TestTokenizerOnHeldOutSource(t *testing.T) {
	list, err := os.ReadFile("../testdata/demo/heldout_files.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(list)), "\n")
	if !strings.Contains(lines[0], runtime.Version()+" ") {
		t.Skipf("held-out ids come from %s; this is %s", strings.TrimPrefix(lines[0], "# "), runtime.Version())
	}
	src, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", lines[1]))
	if err != nil {
		t.Skip(err)
	}
	tok, err := demo.Tokenizer()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../testdata/demo/heldout-first-windows.u16")
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode(string(src), true)
	for i, id := range ids {
		if 2*i+2 > len(raw) {
			break
		}
		if want := int32(binary.LittleEndian.Uint16(raw[2*i:])); id != want {
			t.Fatalf("%s: token %d is %d, the evaluated data has %d", lines[1], i, id, want)
		}
	}
	if d := tok.Decode(ids, true); d != string(src) {
		t.Fatalf("decode(encode(%s)) differs from the file", lines[1])
	}
}
