package backend

import (
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	for _, name := range []string{"cpu", "cpu-f64", "cpu-f32", "cpu-int24", "cpu-int8", "auto", ""} {
		b, _, err := Open(name)
		if err != nil {
			t.Fatalf("Open(%q): %v", name, err)
		}
		if b.Name() == "" {
			t.Fatalf("Open(%q) gave a backend without a name", name)
		}
		b.Close()
	}
	if _, _, err := Open("tpu"); err == nil || !strings.Contains(err.Error(), `unknown backend "tpu"`) {
		t.Fatalf("Open(tpu) = %v, want an unknown-backend error", err)
	}
}
