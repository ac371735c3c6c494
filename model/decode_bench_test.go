package model

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/gemmoe/gemmoe/kernels/cpu"
	"github.com/gemmoe/gemmoe/loader"
)

// A decode step on the CPU backend (the path Generate takes: forwardLast)
// must not allocate in steady state; BenchmarkDecodeStep reports allocs/op.

func openFixture(t testing.TB, name string, opts Options) *Model {
	t.Helper()
	src, err := loader.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New()
	t.Cleanup(func() { b.Close() })
	m, err := New(src, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// decodeLoop returns a function that runs one decode step, starting a new
// session (and prefilling it) when the context is full.
func decodeLoop(t testing.TB, m *Model) (step func(), done func()) {
	ctx := context.Background()
	var s *Session
	start := func() {
		if s != nil {
			s.Close()
		}
		var err error
		if s, err = m.NewSession(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.forwardLast(ctx, []int32{2, 10, 20, 30}); err != nil {
			t.Fatal(err)
		}
	}
	start()
	tok := int32(5)
	return func() {
			if s.Len() >= m.ContextLength()-1 {
				start()
			}
			s.tok1[0] = tok
			l, err := s.forwardLast(ctx, s.tok1[:])
			if err != nil {
				t.Fatal(err)
			}
			tok = int32(len(l)/3 + s.Len()%7) // any valid id
		}, func() {
			s.Close()
		}
}

func TestDecodeStepAllocs(t *testing.T) {
	for _, name := range []string{"tiny-moe", "tiny-moe-4bit"} {
		t.Run(name, func(t *testing.T) {
			m := openFixture(t, name, Options{Chunk: 8, ContextLength: 512})
			step, done := decodeLoop(t, m)
			defer done()
			for range 40 { // past the sliding window: the rings wrap
				step()
			}
			if a := testing.AllocsPerRun(50, step); a != 0 {
				t.Errorf("%v allocations per decode step, want 0", a)
			}
		})
	}
}

func BenchmarkDecodeStep(b *testing.B) {
	for _, name := range []string{"tiny-moe", "tiny-moe-4bit"} {
		b.Run(name, func(b *testing.B) {
			m := openFixture(b, name, Options{Chunk: 8, ContextLength: 2048})
			step, done := decodeLoop(b, m)
			defer done()
			for range 20 {
				step()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				step()
			}
		})
	}
}
