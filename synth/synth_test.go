package synth

import (
	"context"
	"testing"

	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/model"
)

// TestSmallModelRuns builds a narrow variant of the real architecture,
// loads it through the loader and decodes a few tokens with finite logits.
func TestSmallModelRuns(t *testing.T) {
	a := Archs["gemma-4-26b-a4b"]
	a.Vocab, a.Hidden, a.Experts, a.ExpertWidth, a.MLPWidth = 512, 256, 16, 128, 192
	a.SlidingHeadDim, a.FullHeadDim, a.Heads, a.Window, a.SlidingKVHeads = 64, 128, 4, 8, 2
	for _, bits := range []int{0, 4, 8} {
		spec := Spec{Layers: 6, Bits: bits, Seed: 1}
		size, err := Size(a, spec)
		if err != nil {
			t.Fatal(err)
		}
		cfg, img, err := Build(a, spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(img)) < size {
			t.Fatalf("image %d bytes < size %d", len(img), size)
		}
		src, err := loader.OpenBytes(cfg, img)
		if err != nil {
			t.Fatalf("%d bits: %v", bits, err)
		}
		b := cpu.New()
		m, err := model.New(src, b, model.Options{Chunk: 4})
		if err != nil {
			t.Fatal(err)
		}
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		logits, err := s.Forward(context.Background(), []int32{2, 7, 9, 11, 13, 17, 19, 23, 29, 31})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range logits {
			if v != v || v > 30 || v < -30 {
				t.Fatalf("%d bits: logit %v is not finite within the softcap", bits, v)
			}
		}
		s.Close()
		m.Close()
		b.Close()
	}
}

func TestSpecErrors(t *testing.T) {
	a := Archs["gemma-4-26b-a4b"]
	for _, s := range []Spec{{Layers: 31}, {Bits: 7}, {Bits: 4, Group: 128}} {
		if _, err := Size(a, s); err == nil {
			t.Errorf("Size(%+v): want an error", s)
		}
	}
	full, err := Size(a, Spec{Bits: 4})
	if err != nil {
		t.Fatal(err)
	}
	// 26B-A4B at 4 bits g64 is about 25.2e9 parameters × 4.5 bits.
	if gib := float64(full) / (1 << 30); gib < 12 || gib > 16 {
		t.Fatalf("4-bit 26B-A4B estimate %.1f GiB, want 12..16", gib)
	}
}
