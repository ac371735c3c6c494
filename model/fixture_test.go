package model_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
	"github.com/nlpodyssey/safetensors"
)

var fixtures = []string{"tiny-moe", "tiny-moe-4bit", "tiny-moe-8bit", "tiny-moe-mixed"}

// reference is what transformers computed for a fixture (see testdata/README.md).
type reference struct {
	inputIDs     []int32
	logits       []float32 // [T, V]
	hidden       []float32 // [L+1, T, H]
	routerIDs    []int32   // [L, T, k]
	greedyPrompt []int32
	greedyTokens []int32
	minMargin    float64
}

func readReference(t *testing.T, dir string) *reference {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "reference.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := safetensors.Deserialize(data)
	if err != nil {
		t.Fatal(err)
	}
	f32 := func(name string) []float32 {
		v, ok := st.Tensor(name)
		if !ok {
			t.Fatalf("reference has no %s", name)
		}
		b := v.Data()
		out := make([]float32, len(b)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out
	}
	i32 := func(name string) []int32 {
		v := f32(name)
		out := make([]int32, len(v))
		for i, x := range v {
			out[i] = int32(math.Float32bits(x))
		}
		return out
	}
	var js struct {
		MinMargin float64 `json:"greedy_min_margin"`
	}
	jb, err := os.ReadFile(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(jb, &js); err != nil {
		t.Fatal(err)
	}
	return &reference{
		inputIDs: i32("input_ids"), logits: f32("logits"), hidden: f32("hidden_states"),
		routerIDs: i32("router_topk_idx"), greedyPrompt: i32("greedy_prompt"), greedyTokens: i32("greedy_tokens"),
		minMargin: js.MinMargin,
	}
}

func open(t *testing.T, name string, opts model.Options) (*model.Model, *loader.Model) {
	t.Helper()
	src, err := loader.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New()
	m, err := model.New(src, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close(); src.Close() })
	return m, src
}

func maxAbsDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = max(d, math.Abs(float64(a[i])-float64(b[i])))
	}
	return d
}

// TestFixtureLogits checks the full-sequence forward against transformers:
// logits within 5e-3, hidden states per layer within 1e-3 relative, and the
// router's top-k ids identical.
func TestFixtureLogits(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			ref := readReference(t, filepath.Join("..", "testdata", name))
			m, _ := open(t, name, model.Options{Chunk: 64})
			s, err := m.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			T, H, V := len(ref.inputIDs), m.Config.HiddenSize, m.Config.VocabSize
			L := m.Config.NumLayers
			hidden := make([][]float32, L+1)
			var routerIDs [][]int32
			trace := &model.Trace{
				Hidden: func(layer int, h []float32) {
					if layer < L-1 {
						hidden[layer+1] = h
					}
				},
				Router: func(layer int, ids []int32, _ []float32) { routerIDs = append(routerIDs, ids) },
			}
			logits, err := s.ForwardAll(context.Background(), ref.inputIDs, trace)
			if err != nil {
				t.Fatal(err)
			}
			// Per-layer hidden states first: they tell where a divergence starts.
			for i := 0; i < L; i++ {
				want := ref.hidden[i*T*H : (i+1)*T*H]
				got := hidden[i]
				var num, den float64
				for j := range want {
					num = max(num, math.Abs(float64(got[j]-want[j])))
					den = max(den, math.Abs(float64(want[j])))
				}
				if num/den > 1e-3 {
					t.Fatalf("hidden state %d (after layer %d) differs: max |Δ| %.3g relative to max |h| %.3g = %.3g > 1e-3", i, i-1, num, den, num/den)
				}
			}
			for l, ids := range routerIDs {
				want := ref.routerIDs[l*len(ids) : (l+1)*len(ids)]
				for j := range ids {
					if ids[j] != want[j] {
						t.Fatalf("layer %d router ids differ at %d: got %v want %v", l, j, ids[j], want[j])
					}
				}
			}
			var worst float64
			for r := 0; r < T; r++ {
				worst = max(worst, maxAbsDiff(logits[r], ref.logits[r*V:(r+1)*V]))
			}
			t.Logf("max |logits - reference| = %.3g", worst)
			if worst > 5e-3 {
				t.Fatalf("logits differ from the reference by %.3g > 5e-3", worst)
			}
		})
	}
}
