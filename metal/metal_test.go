package metal

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestPlanViewsSmall(t *testing.T) {
	v, err := PlanViews(100_000, 1<<30, 16384)
	if err != nil {
		t.Fatal(err)
	}
	if v.Count() != 1 {
		t.Fatalf("count %d, want 1", v.Count())
	}
	if s, n := v.View(0); s != 0 || n != 7*16384 {
		t.Errorf("view 0 = [%d, +%d), want the region padded to 7 pages", s, n)
	}
	if i, rel, err := v.Find(99_000, 1000); err != nil || i != 0 || rel != 99_000 {
		t.Errorf("Find = %d, %d, %v", i, rel, err)
	}
	if _, _, err := v.Find(99_500, 1000); err == nil {
		t.Error("Find past the end: no error")
	}
}

func TestPlanViewsLarge(t *testing.T) {
	const page = 16384
	for _, c := range []struct{ length, maxLen int64 }{
		{10 << 20, 1 << 20},          // many views
		{3<<20 + 123, 2<<20 + 5000},  // max not a page multiple, length not either
		{5 << 20, 4 << 20},           // just over one view
		{(4 << 20) - 100, (4 << 20)}, // padded length equals the maximum: one view
	} {
		v, err := PlanViews(c.length, c.maxLen, page)
		if err != nil {
			t.Fatal(err)
		}
		padded := (c.length + page - 1) / page * page
		n := v.Count()
		// Views start page-aligned, stay within the maximum, cover the
		// padded region, and the last one ends exactly there.
		for i := range n {
			s, l := v.View(i)
			if s%page != 0 || l <= 0 || l > c.maxLen || s+l > padded {
				t.Fatalf("%+v: view %d = [%d, +%d)", c, i, s, l)
			}
			if i > 0 {
				ps, pl := v.View(i - 1)
				if ps+pl-s != v.Overlap() && i < n-1 {
					t.Errorf("%+v: views %d and %d overlap by %d, want %d", c, i-1, i, ps+pl-s, v.Overlap())
				}
			}
		}
		if s, l := v.View(n - 1); s+l != padded {
			t.Errorf("%+v: last view ends at %d, want %d", c, s+l, padded)
		}
		if n > 1 {
			if s, _ := v.View(n - 2); s+v.ViewLen >= padded {
				t.Errorf("%+v: %d views where %d would do", c, n, n-1)
			}
			if v.Overlap() < v.ViewLen/2-page {
				t.Errorf("%+v: overlap %d is under half a view", c, v.Overlap())
			}
		}
		// Every range up to Overlap bytes is found in one view.
		r := rand.New(rand.NewPCG(uint64(c.length), 1))
		for range 2000 {
			ln := r.Int64N(v.Overlap() + 1)
			off := r.Int64N(c.length - ln + 1)
			i, rel, err := v.Find(off, ln)
			if err != nil {
				t.Fatalf("%+v: Find(%d, %d): %v", c, off, ln, err)
			}
			s, l := v.View(i)
			if s+rel != off || rel+ln > l {
				t.Fatalf("%+v: Find(%d, %d) = view %d [%d,+%d) at %d", c, off, ln, i, s, l, rel)
			}
		}
	}
}

func TestPlanViewsErrors(t *testing.T) {
	if _, err := PlanViews(0, 1<<20, 16384); err == nil {
		t.Error("empty region: no error")
	}
	if _, err := PlanViews(1<<20, 1<<20, 3000); err == nil {
		t.Error("page size not a power of two: no error")
	}
	if _, err := PlanViews(1<<20, 20000, 16384); err == nil {
		t.Error("maximum under two pages: no error")
	}
	v, err := PlanViews(10<<20, 1<<20, 16384)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Find(0, v.ViewLen+1); err == nil || !strings.Contains(err.Error(), "does not fit in one Metal buffer view") {
		t.Errorf("a range longer than a view: %v", err)
	}
	if _, _, err := v.Find(-1, 10); err == nil {
		t.Error("negative offset: no error")
	}
}

func TestPipelineKey(t *testing.T) {
	a := PipelineKey("qmv", []Constant{{0, 4}, {1, 64}, {2, 3}})
	b := PipelineKey("qmv", []Constant{{2, 3}, {0, 4}, {1, 64}})
	if a != b || a != "qmv[0=4,1=64,2=3]" {
		t.Errorf("keys %q and %q", a, b)
	}
	distinct := map[string]bool{}
	for _, k := range []string{
		a, PipelineKey("qmv", []Constant{{0, 4}, {1, 64}, {2, 2}}), PipelineKey("qmm", []Constant{{0, 4}, {1, 64}, {2, 3}}),
		PipelineKey("qmv", nil), PipelineKey("qmv", []Constant{{0, 46}, {1, 4}, {2, 3}}),
	} {
		if distinct[k] {
			t.Errorf("key %q repeats", k)
		}
		distinct[k] = true
	}
	if err := checkConstants("k", []Constant{{1, 0}, {1, 2}}); err == nil {
		t.Error("duplicate index: no error")
	}
	if err := checkConstants("k", []Constant{{-1, 0}}); err == nil {
		t.Error("negative index: no error")
	}
}

func TestCheckDispatch(t *testing.T) {
	ok := []Binding{{Bytes: []byte{1, 2, 3, 4}}, {Buf: &Buffer{}, Len: 8}}
	if err := checkDispatch("k", Size{2, 1, 1}, Size{64, 1, 1}, ok, 1024); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		groups, threads Size
		args            []Binding
	}{
		{Size{0, 1, 1}, Size{64, 1, 1}, nil},
		{Size{1, 1, 1}, Size{64, 32, 1}, nil},
		{Size{1, 1, 1}, Size{64, 1, 1}, []Binding{{}}},
		{Size{1, 1, 1}, Size{64, 1, 1}, []Binding{{Bytes: make([]byte, 5000)}}},
		{Size{1, 1, 1}, Size{64, 1, 1}, []Binding{{Buf: &Buffer{}, Offset: -1}}},
		{Size{1, 1, 1}, Size{64, 1, 1}, make([]Binding, 32)},
	} {
		if err := checkDispatch("k", c.groups, c.threads, c.args, 1024); err == nil {
			t.Errorf("%v %v %d args: no error", c.groups, c.threads, len(c.args))
		}
	}
}

func TestOpenWithoutMetal(t *testing.T) {
	if runtime.GOOS == "darwin" && runtime.GOARCH == "arm64" {
		t.Skip("this is an Apple Silicon Mac")
	}
	d, err := Open()
	if err == nil {
		d.Close()
		t.Fatal("Open succeeded without Metal")
	}
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "Apple Silicon") {
		t.Errorf("Open: %v, want an ErrUnavailable that names Apple Silicon", err)
	}
}

// TestCrossBuildDarwin builds the Metal packages for macOS without cgo, the
// way CI must: the darwin-only runtime compiles even where it cannot run.
func TestCrossBuildDarwin(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the standard library for darwin on a cold cache")
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command")
		}
	}
	for _, arch := range []string{"arm64", "amd64"} {
		cmd := exec.Command(gobin, "vet", "github.com/gemmoe/gemmoe/metal", "github.com/gemmoe/gemmoe/kernels/metal")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=darwin", "GOARCH="+arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("darwin/%s: go vet: %v\n%s", arch, err, out)
		}
	}
}
