package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// TestSideJoin runs two sequences of ops at once (kernels.Concurrent),
// directly and as a replayed graph, and checks the result of the
// computation they join into against its exact value: out = 2·5·x +
// (3·x + x) = 14·x in f32. It also checks the calls that must wait for
// Join fail clearly, and that a scratch buffer freed on the side is not
// handed out before Join.
func TestSideJoin(t *testing.T) {
	be, _ := gpus(t)
	r := rand.New(rand.NewPCG(71, 72))
	const n = 1 << 16
	x, _ := be.Alloc(dtype.F32, 1, n)
	a, _ := be.Alloc(dtype.F32, 1, n)
	b, _ := be.Alloc(dtype.F32, 1, n)
	out, _ := be.Alloc(dtype.F32, 1, n)
	run := func() error {
		if err := be.Scale(a, x, 2); err != nil {
			return err
		}
		var sidePtr uintptr
		if err := be.Side(func() error {
			tmp, err := be.Alloc(dtype.F32, 1, n)
			if err != nil {
				return err
			}
			defer be.Free(tmp) // reserved until Join
			sidePtr = uintptr(tmp.Buf.(*buffer).ptr)
			if err := be.Scale(tmp, x, 3); err != nil {
				return err
			}
			return be.Add(b, tmp, x)
		}); err != nil {
			return err
		}
		// The main queue's scratch must not be the side's, still in use.
		tmp, err := be.Alloc(dtype.F32, 1, n)
		if err != nil {
			return err
		}
		if uintptr(tmp.Buf.(*buffer).ptr) == sidePtr {
			t.Error("a buffer freed on the side was handed out before Join")
		}
		if err := be.Scale(tmp, x, 5); err != nil {
			return err
		}
		if err := be.Scale(a, a, 5); err != nil {
			return err
		}
		be.Free(tmp)
		if err := be.Join(); err != nil {
			return err
		}
		return be.Add(out, a, b)
	}
	check := func(what string, xv []float32) {
		t.Helper()
		got := get(t, be, out)
		for i, v := range xv {
			if want := 14 * v; got[i] != want {
				t.Fatalf("%s: out[%d] = %g, want %g", what, i, got[i], want)
			}
		}
	}
	xv := make([]float32, n)
	for i := range xv {
		xv[i] = float32(r.IntN(1000)) // small integers: every product and sum is exact
	}
	if err := be.Upload(x, encode(xv, dtype.F32)); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	check("direct", xv)

	if err := be.BeginCapture(); err != nil {
		t.Fatal(err)
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	g, err := be.EndCapture()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for rep := range 3 {
		for i := range xv {
			xv[i] = float32(r.IntN(1000))
		}
		if err := be.Upload(x, encode(xv, dtype.F32)); err != nil {
			t.Fatal(err)
		}
		if err := g.Launch(); err != nil {
			t.Fatal(err)
		}
		check("graph replay "+string(rune('1'+rep)), xv)
	}

	// What must wait for Join.
	sideErr := be.Side(func() error {
		if err := be.Side(func() error { return nil }); err == nil {
			t.Error("Side inside Side succeeded")
		}
		return be.Scale(b, x, 1)
	})
	if sideErr != nil {
		t.Fatal(sideErr)
	}
	for what, f := range map[string]func() error{
		"Upload":       func() error { return be.Upload(x, encode(xv, dtype.F32)) },
		"Download":     func() error { return be.Download(make([]byte, 4*n), x) },
		"Sync":         be.Sync,
		"BeginCapture": be.BeginCapture,
		"Side":         func() error { return be.Side(func() error { return nil }) },
	} {
		if err := f(); err == nil {
			t.Errorf("%s between Side and Join succeeded", what)
		}
	}
	if err := be.Join(); err != nil {
		t.Fatal(err)
	}
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	var _ kernels.Concurrent = be
}
