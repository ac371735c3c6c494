package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestBenchErrors(t *testing.T) {
	cases := []struct {
		name string
		o    options
		want string
	}{
		{"no model", options{reps: 1, gen: 1}, "exactly one of"},
		{"both", options{synthetic: "gemma-4-26b-a4b", modelDir: "x", reps: 1, gen: 1}, "exactly one of"},
		{"unknown synthetic", options{synthetic: "llama", reps: 1, gen: 1, bits: 4, group: 64}, `unknown synthetic model "llama"`},
		{"too many layers", options{synthetic: "gemma-4-26b-a4b", layers: 31, reps: 1, gen: 1, bits: 4, group: 64}, "30 layers"},
		{"bad bits", options{synthetic: "gemma-4-26b-a4b", layers: 1, reps: 1, gen: 1, bits: 7, group: 64}, "7 bits"},
		{"nothing to run", options{synthetic: "gemma-4-26b-a4b", reps: 1}, "-prompt or -gen"},
		{"unknown sampler", options{synthetic: "gemma-4-26b-a4b", reps: 1, gen: 1, sample: "nucleus"}, `-sample "nucleus"`},
		{"missing model dir", options{modelDir: "does-not-exist", reps: 1, gen: 1, backend: "cpu"}, "does-not-exist"},
		{"unknown backend", options{modelDir: "../../testdata/tiny-moe-4bit", reps: 1, gen: 1, backend: "tpu"}, "unknown backend"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := run(context.Background(), c.o, &bytes.Buffer{}, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestRefusesWhatDoesNotFit: the memory estimate comes before any allocation.
func TestRefusesWhatDoesNotFit(t *testing.T) {
	defer func(f func() (int64, bool)) { memAvailable = f }(memAvailable)
	memAvailable = func() (int64, bool) { return 4 << 30, true }
	err := run(context.Background(), options{synthetic: "gemma-4-26b-a4b", bits: 4, group: 64, reps: 1, gen: 1, backend: "cpu"},
		&bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "is available; try -layers") {
		t.Fatalf("got %v, want a refusal suggesting fewer layers", err)
	}
}

// TestModelDirRuns measures a real checkpoint directory end to end.
func TestModelDirRuns(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), options{modelDir: "../../testdata/tiny-moe-4bit", prompt: 8, gen: 4, reps: 1, backend: "cpu", jsonOut: true},
		&out, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), `"tokens_per_sec"`); n != 2 {
		t.Fatalf("want a pp and a tg result, got %q", out.String())
	}
	out.Reset()
	err = run(context.Background(), options{modelDir: "../../testdata/tiny-moe-4bit", gen: 4, reps: 1, backend: "cpu", sample: "gemma"},
		&out, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tg4 gemma") {
		t.Fatalf("want a tg4 gemma row, got %q", out.String())
	}
}
