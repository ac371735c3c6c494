package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Each op against a float64 reference written with straight loops.

func refGelu(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

func TestElementwise(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(21, 22))
	type op struct {
		name string
		run  func(y, a, c kernels.Tensor) error
		ref  func(a, c float64) float64
	}
	ops := []op{
		{"Add", func(y, a, c kernels.Tensor) error { return b.Add(y, a, c) }, func(a, c float64) float64 { return a + c }},
		{"Scale", func(y, a, _ kernels.Tensor) error { return b.Scale(y, a, 0.375) }, func(a, _ float64) float64 { return 0.375 * a }},
		{"Softcap", func(y, a, _ kernels.Tensor) error { return b.Softcap(y, a, 3) }, func(a, _ float64) float64 { return 3 * math.Tanh(a/3) }},
		{"GeluTanhMul", func(y, a, c kernels.Tensor) error { return b.GeluTanhMul(y, a, c) }, func(a, c float64) float64 { return refGelu(a) * c }},
	}
	for _, o := range ops {
		for _, io := range []dtype.DType{dtype.F32, dtype.BF16} {
			for _, shape := range [][]int{{1, 7}, {3, 100}, {2, 40000}} {
				t.Run(fmt.Sprintf("%s/%s/%v", o.name, io, shape), func(t *testing.T) {
					n := shape[0] * shape[1]
					a := rounded(io, randVals(r, n, -6, 6))
					c := rounded(io, randVals(r, n, -2, 2))
					at, ct := tensor(t, b, io, a, shape...), tensor(t, b, io, c, shape...)
					yt := tensor(t, b, io, nil, shape...)
					if err := o.run(yt, at, ct); err != nil {
						t.Fatal(err)
					}
					want := make([]float64, n)
					for i := range want {
						want[i] = o.ref(a[i], c[i])
					}
					rel := 1e-6
					if io == dtype.BF16 {
						rel = 1.0 / 256
					}
					within(t, "y", fetch(t, b, yt), want, nil, rel, 1e-7)
					// In place: y = a.
					if err := o.run(at, at, ct); err != nil {
						t.Fatal(err)
					}
					within(t, "y in place", fetch(t, b, at), want, nil, rel, 1e-7)
				})
			}
		}
	}
}

func TestSoftmax(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(23, 24))
	for _, shape := range [][]int{{1, 1}, {1, 5}, {4, 128}, {2, 3, 50}} {
		n := 1
		for _, d := range shape {
			n *= d
		}
		cols := shape[len(shape)-1]
		x := rounded(dtype.F32, randVals(r, n, -20, 20))
		xt := tensor(t, b, dtype.F32, x, shape...)
		yt := tensor(t, b, dtype.F32, nil, shape...)
		if err := b.Softmax(yt, xt); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, n)
		for row := 0; row < n/cols; row++ {
			m := math.Inf(-1)
			for _, v := range x[row*cols : (row+1)*cols] {
				m = math.Max(m, v)
			}
			var s float64
			for i := row * cols; i < (row+1)*cols; i++ {
				want[i] = math.Exp(x[i] - m)
				s += want[i]
			}
			for i := row * cols; i < (row+1)*cols; i++ {
				want[i] /= s
			}
		}
		within(t, fmt.Sprint("softmax ", shape), fetch(t, b, yt), want, nil, 1e-6, 1e-9)
	}
}

func TestRMSNorm(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(25, 26))
	for _, withW := range []bool{false, true} {
		for _, shape := range [][]int{{1, 128}, {5, 2816}, {3, 4, 32}} {
			t.Run(fmt.Sprintf("weight=%v/%v", withW, shape), func(t *testing.T) {
				rows, n := 1, shape[len(shape)-1]
				for _, d := range shape[:len(shape)-1] {
					rows *= d
				}
				x := rounded(dtype.F32, randNorm(r, rows*n))
				var w []float64
				var wt kernels.Tensor
				if withW {
					w = rounded(dtype.BF16, randVals(r, n, -2, 2))
					wt = tensor(t, b, dtype.BF16, w, n)
				}
				const eps = 1e-6
				want := make([]float64, rows*n)
				for row := range rows {
					var ss float64
					for _, v := range x[row*n : (row+1)*n] {
						ss += v * v
					}
					inv := 1 / math.Sqrt(ss/float64(n)+eps)
					for i := range n {
						want[row*n+i] = x[row*n+i] * inv
						if withW {
							want[row*n+i] *= w[i]
						}
					}
				}
				xt := tensor(t, b, dtype.F32, x, shape...)
				yt := tensor(t, b, dtype.F32, nil, shape...)
				if err := b.RMSNorm(yt, xt, wt, eps); err != nil {
					t.Fatal(err)
				}
				within(t, "y", fetch(t, b, yt), want, nil, 1e-6, 1e-7)
				if err := b.RMSNorm(xt, xt, wt, eps); err != nil { // y aliases x
					t.Fatal(err)
				}
				within(t, "y in place", fetch(t, b, xt), want, nil, 1e-6, 1e-7)
			})
		}
	}
}

func TestRoPE(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(27, 28))
	// Default RoPE over the whole head (θ=1e4, D=32) and proportional RoPE
	// (θ=1e6, D=64, partial 0.25: the last 3/4 of the frequencies are zero).
	type rc struct {
		theta   float64
		d       int
		partial float64
	}
	for _, c := range []rc{{1e4, 32, 1}, {1e6, 64, 0.25}} {
		for _, shape := range []string{"3d", "2d"} {
			t.Run(fmt.Sprintf("theta%g/D%d/%s", c.theta, c.d, shape), func(t *testing.T) {
				half := c.d / 2
				inv := make([]float64, half)
				for i := range inv {
					if float64(i) < c.partial*float64(half) {
						inv[i] = math.Pow(c.theta, -2*float64(i)/float64(c.d))
					}
				}
				inv = rounded(dtype.F32, inv)
				pos := []float64{0, 1, 7, 100, 4095, 70000}
				const heads = 3
				T := len(pos)
				x := rounded(dtype.F32, randNorm(r, T*heads*c.d))
				var xt kernels.Tensor
				if shape == "3d" {
					xt = tensor(t, b, dtype.F32, x, T, heads, c.d)
				} else {
					xt = tensor(t, b, dtype.F32, x, T, heads*c.d)
				}
				if err := b.RoPE(xt, tensor(t, b, dtype.I32, pos, T), tensor(t, b, dtype.F32, inv, half)); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, len(x))
				for ti, p := range pos {
					for h := range heads {
						base := (ti*heads + h) * c.d
						for i := range half {
							// The angle is formed in f32 as PyTorch does (pos·inv_freq).
							ang := float64(float32(p) * float32(inv[i]))
							cs, sn := math.Cos(ang), math.Sin(ang)
							x1, x2 := x[base+i], x[base+half+i]
							want[base+i] = x1*cs - x2*sn
							want[base+half+i] = x2*cs + x1*sn
						}
					}
				}
				got := fetch(t, b, xt)
				within(t, "rotated", got, want, nil, 0, 2e-6*4)
				for ti := range pos { // zero frequencies leave their pairs exactly as they were
					for h := range heads {
						for i := range half {
							if inv[i] != 0 {
								continue
							}
							for _, j := range []int{(ti*heads+h)*c.d + i, (ti*heads+h)*c.d + half + i} {
								if got[j] != x[j] {
									t.Fatalf("unrotated element %d changed: %v -> %v", j, x[j], got[j])
								}
							}
						}
					}
				}
			})
		}
	}
}

func TestMoECombine(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(29, 30))
	const m, k, n = 3, 4, 50
	x := rounded(dtype.F32, randNorm(r, m*k*n))
	w := rounded(dtype.F32, randVals(r, m*k, 0, 1))
	yt := tensor(t, b, dtype.F32, nil, m, n)
	if err := b.MoECombine(yt, tensor(t, b, dtype.F32, x, m, k, n), tensor(t, b, dtype.F32, w, m, k)); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, m*n)
	for i := range m {
		for j := range k {
			for c := range n {
				want[i*n+c] += w[i*k+j] * x[(i*k+j)*n+c]
			}
		}
	}
	within(t, "y", fetch(t, b, yt), want, nil, 1e-6, 1e-6)
}

func TestEmbed(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(31, 32))
	const v, n = 50, 128
	ids := []float64{3, 0, 49, 3, 17}
	const scale = 11.3137085
	check := func(t *testing.T, w *kernels.Weight, dense []float64) {
		yt := tensor(t, b, dtype.F32, nil, len(ids), n)
		if err := b.Embed(yt, w, tensor(t, b, dtype.I32, ids, len(ids)), scale); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, len(ids)*n)
		for i, id := range ids {
			for c := range n {
				want[i*n+c] = dense[int(id)*n+c] * scale
			}
		}
		within(t, "rows", fetch(t, b, yt), want, nil, 1e-6, 1e-6)
	}
	for _, dt := range []dtype.DType{dtype.BF16, dtype.F16, dtype.F32} {
		t.Run("dense/"+dt.String(), func(t *testing.T) {
			d := rounded(dt, randVals(r, v*n, -1, 1))
			check(t, &kernels.Weight{Data: tensor(t, b, dt, d, v, n), N: v, K: n}, d)
		})
	}
	for _, bits := range []int{2, 3, 4, 5, 6, 8} {
		t.Run(fmt.Sprintf("q%d", bits), func(t *testing.T) {
			qm := randQMat(r, v, n, bits, 64, dtype.BF16)
			check(t, qm.upload(t, b, dtype.BF16), qm.dense())
		})
	}
}

func TestRouterTopK(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(33, 34))
	const m, e, k = 4, 16, 4
	logits := rounded(dtype.F32, randNorm(r, m*e))
	// Row 3: ties. Experts 2, 5 and 9 share the top logit; 7 and 1 the next.
	for i := range e {
		logits[3*e+i] = -1
	}
	logits[3*e+9], logits[3*e+5], logits[3*e+2] = 2, 2, 2
	logits[3*e+7], logits[3*e+1] = 1, 1
	pes := rounded(dtype.BF16, randVals(r, e, 0.5, 2))
	for _, withScale := range []bool{false, true} {
		wt := tensor(t, b, dtype.F32, nil, m, k)
		it := tensor(t, b, dtype.I32, nil, m, k)
		var st kernels.Tensor
		if withScale {
			st = tensor(t, b, dtype.BF16, pes, e)
		}
		if err := b.RouterTopK(wt, it, tensor(t, b, dtype.F32, logits, m, e), st, k); err != nil {
			t.Fatal(err)
		}
		gotW, gotI := fetch(t, b, wt), fetch(t, b, it)
		for row := range m {
			lg := logits[row*e : (row+1)*e]
			mx := math.Inf(-1)
			for _, v := range lg {
				mx = math.Max(mx, v)
			}
			p := make([]float64, e)
			var s float64
			for i, v := range lg {
				p[i] = math.Exp(v - mx)
				s += p[i]
			}
			taken := make([]bool, e)
			var sel []int
			var sum float64
			for range k {
				best := -1
				for i := range e {
					if !taken[i] && (best < 0 || p[i] > p[best]) {
						best = i
					}
				}
				taken[best] = true
				sel = append(sel, best)
				sum += p[best] / s
			}
			for j, id := range sel {
				if int(gotI[row*k+j]) != id {
					t.Fatalf("scale=%v row %d: ids %v, want %v", withScale, row, gotI[row*k:(row+1)*k], sel)
				}
				want := p[id] / s / sum
				if withScale {
					want *= pes[id]
				}
				if math.Abs(gotW[row*k+j]-want) > 1e-6*want {
					t.Fatalf("scale=%v row %d slot %d: weight %v, want %v", withScale, row, j, gotW[row*k+j], want)
				}
			}
		}
		if ids := gotI[3*k : 4*k]; ids[0] != 2 || ids[1] != 5 || ids[2] != 9 || ids[3] != 1 {
			t.Fatalf("ties: ids %v, want [2 5 9 1]", ids)
		}
	}
}

// TestAttention runs a prefill chunk and then decode steps through StoreKV and
// Attention on a ring cache (sliding window) and a full cache, with GQA,
// against attention computed over the whole history in float64.
func TestAttention(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(35, 36))
	const heads, kvHeads, hd = 4, 2, 8
	type ac struct {
		window, capacity int
		cdt              dtype.DType
		scale            float32
		prefill          int
	}
	for _, c := range []ac{{5, 5, dtype.F32, 1, 4}, {5, 8, dtype.BF16, 1, 4}, {4, 10, dtype.F32, 1, 7}, {0, 32, dtype.F32, 0.35, 4}, {0, 32, dtype.F16, 1, 9}} {
		t.Run(fmt.Sprintf("window%d/cap%d/%s/prefill%d", c.window, c.capacity, c.cdt, c.prefill), func(t *testing.T) {
			p := kernels.AttentionParams{Heads: heads, KVHeads: kvHeads, HeadDim: hd, Window: c.window, Scale: c.scale}
			kc := tensor(t, b, c.cdt, nil, c.capacity, kvHeads*hd)
			vc := tensor(t, b, c.cdt, nil, c.capacity, kvHeads, hd)
			var keys, vals [][]float64 // by position, as stored (rounded to the cache dtype)
			step := func(pos []int) {
				T := len(pos)
				kv := rounded(dtype.F32, randNorm(r, 2*T*kvHeads*hd))
				q := rounded(dtype.F32, randNorm(r, T*heads*hd))
				pf := make([]float64, T)
				for i, v := range pos {
					pf[i] = float64(v)
				}
				pt := tensor(t, b, dtype.I32, pf, T)
				kw := kvHeads * hd
				if err := b.StoreKV(kc, tensor(t, b, dtype.F32, kv[:T*kw], T, kw), pt); err != nil {
					t.Fatal(err)
				}
				if err := b.StoreKV(vc, tensor(t, b, dtype.F32, kv[T*kw:], T, kw), pt); err != nil {
					t.Fatal(err)
				}
				for i := range T {
					keys = append(keys, rounded(c.cdt, kv[i*kw:(i+1)*kw]))
					vals = append(vals, rounded(c.cdt, kv[(T+i)*kw:(T+i+1)*kw]))
				}
				out := tensor(t, b, dtype.F32, nil, T, heads*hd)
				if err := b.Attention(out, tensor(t, b, dtype.F32, q, T, heads*hd), kc, vc, pt, p); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, T*heads*hd)
				for i, ps := range pos {
					lo := 0
					if c.window > 0 {
						lo = max(0, ps-c.window+1)
					}
					for h := range heads {
						kvh := h / (heads / kvHeads)
						qh := q[(i*heads+h)*hd : (i*heads+h+1)*hd]
						s := make([]float64, ps-lo+1)
						mx := math.Inf(-1)
						for j := range s {
							for d := range hd {
								s[j] += qh[d] * keys[lo+j][kvh*hd+d]
							}
							s[j] *= float64(c.scale)
							mx = math.Max(mx, s[j])
						}
						var sum float64
						for j := range s {
							s[j] = math.Exp(s[j] - mx)
							sum += s[j]
						}
						for j := range s {
							for d := range hd {
								want[(i*heads+h)*hd+d] += s[j] / sum * vals[lo+j][kvh*hd+d]
							}
						}
					}
				}
				within(t, fmt.Sprint("positions ", pos), fetch(t, b, out), want, nil, 1e-5, 1e-5)
			}
			var chunk []int
			for ps := range c.prefill {
				chunk = append(chunk, ps)
			}
			step(chunk) // prefill chunk (the ring holds Window+T-1 positions)
			for ps := c.prefill; ps < 20; ps++ {
				step([]int{ps})
			}
		})
	}
}

// TestPoolNoLeak checks that Close stops the workers.
func TestPoolNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	b := New(WithThreads(4))
	if runtime.NumGoroutine() != before+3 {
		t.Fatalf("%d goroutines after New(WithThreads(4)), want %d", runtime.NumGoroutine(), before+3)
	}
	if b.Threads() != 4 {
		t.Fatalf("Threads() = %d, want 4", b.Threads())
	}
	x := tensor(t, b, dtype.F32, make([]float64, 100000), 100000)
	if err := b.Scale(x, x, 2); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b.Close() // idempotent
	if err := b.Scale(x, x, 2); err == nil {
		t.Fatal("Scale after Close: no error")
	}
	// The workers have exited: Close waited for them.
	for i := 0; i < 100 && runtime.NumGoroutine() > before; i++ {
		time.Sleep(time.Millisecond) // a worker past wg.Done may still be exiting
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after Close, want %d", n, before)
	}
}

// TestBuffers checks Alloc (zeroed, aligned), WrapHost (zero copy, read-only),
// Upload/Download, views by offset and Free.
func TestBuffers(t *testing.T) {
	b := newBackend(t)
	if b.Name() != "cpu" || b.ActivationDType() != dtype.F32 {
		t.Fatalf("Name %q, ActivationDType %s", b.Name(), b.ActivationDType())
	}
	x, err := b.Alloc(dtype.BF16, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	if x.Buf.Len() != 30 {
		t.Fatalf("Len %d, want 30", x.Buf.Len())
	}
	raw, _ := b.raw(x, "x", false)
	if uintptr(unsafe.Pointer(&raw[0]))%8 != 0 {
		t.Fatal("Alloc memory is not 8-byte aligned")
	}
	for _, v := range fetch(t, b, x) {
		if v != 0 {
			t.Fatal("Alloc memory is not zeroed")
		}
	}
	host := make([]byte, 64)
	buf, err := b.WrapHost(host)
	if err != nil {
		t.Fatal(err)
	}
	view := kernels.Tensor{Buf: buf, Offset: 8, DType: dtype.F32, Shape: []int{2}}
	copy(host[8:], encode(dtype.F32, []float64{1.5, -2}))
	if got := fetch(t, b, view); got[0] != 1.5 || got[1] != -2 {
		t.Fatalf("WrapHost view reads %v (not zero copy?)", got)
	}
	y := tensor(t, b, dtype.F32, nil, 2)
	if err := b.Scale(view, y, 1); err == nil {
		t.Fatal("writing into a WrapHost buffer: no error")
	}
	if err := b.Add(y, view, view); err != nil {
		t.Fatal(err)
	}
	if got := fetch(t, b, y); got[0] != 3 || got[1] != -4 {
		t.Fatalf("Add of the wrapped view: %v", got)
	}
	b.Free(y)
	b.Free(y) // twice is fine
	b.Free(view)
	if err := b.Download(make([]byte, 8), y); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Fatalf("Download after Free: %v", err)
	}
	if got := fetch(t, b, view); got[0] != 1.5 { // Free of a wrapped buffer does nothing
		t.Fatalf("wrapped view after Free: %v", got)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestAttentionQueriesAtOnce: queries computed in one call (where runs of
// consecutive positions share each key's reads) give the same bits as each
// query alone, with and without a window, for runs that end inside and at
// the edge of the blocks and for positions that jump.
func TestAttentionQueriesAtOnce(t *testing.T) {
	b := newBackend(t)
	r := rand.New(rand.NewPCG(41, 42))
	const heads, kvHeads, capacity = 4, 2, 64
	pos := []int{20, 21, 22, 23, 24, 25, 27, 28, 30, 31, 32, 40, 41, 42, 43, 44}
	for _, c := range []struct {
		cdt    dtype.DType
		hd     int // 64: the four-query kernels where the set has them
		window int
	}{{dtype.F32, 64, 0}, {dtype.F32, 64, 6}, {dtype.F32, 16, 6}, {dtype.BF16, 64, 0}, {dtype.BF16, 16, 6}} {
		cdt, hd, window := c.cdt, c.hd, c.window
		{
			t.Run(fmt.Sprintf("%s/hd%d/window%d", cdt, hd, window), func(t *testing.T) {
				p := kernels.AttentionParams{Heads: heads, KVHeads: kvHeads, HeadDim: hd, Window: window, Scale: 0.25}
				kw := kvHeads * hd
				kc := tensor(t, b, cdt, nil, capacity, kw)
				vc := tensor(t, b, cdt, nil, capacity, kw)
				all := make([]float64, capacity)
				for i := range all {
					all[i] = float64(i)
				}
				pt := tensor(t, b, dtype.I32, all, capacity)
				for _, c := range []kernels.Tensor{kc, vc} {
					if err := b.StoreKV(c, tensor(t, b, dtype.F32, randNorm(r, capacity*kw), capacity, kw), pt); err != nil {
						t.Fatal(err)
					}
				}
				T := len(pos)
				q := randNorm(r, T*heads*hd)
				pf := make([]float64, T)
				for i, v := range pos {
					pf[i] = float64(v)
				}
				out := tensor(t, b, dtype.F32, nil, T, heads*hd)
				if err := b.Attention(out, tensor(t, b, dtype.F32, q, T, heads*hd), kc, vc, tensor(t, b, dtype.I32, pf, T), p); err != nil {
					t.Fatal(err)
				}
				got := fetch(t, b, out)
				for i := range T {
					one := tensor(t, b, dtype.F32, nil, 1, heads*hd)
					qi := tensor(t, b, dtype.F32, q[i*heads*hd:(i+1)*heads*hd], 1, heads*hd)
					if err := b.Attention(one, qi, kc, vc, tensor(t, b, dtype.I32, pf[i:i+1], 1), p); err != nil {
						t.Fatal(err)
					}
					for d, v := range fetch(t, b, one) {
						if g := got[i*heads*hd+d]; math.Float32bits(float32(g)) != math.Float32bits(float32(v)) {
							t.Fatalf("query %d (position %d) value %d: %v together, %v alone", i, pos[i], d, g, v)
						}
					}
				}
			})
		}
	}
}
