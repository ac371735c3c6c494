package metal

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Host-side tests that need neither a Mac nor a compiler: the Go mirrors of
// the MSL argument structs, dtype codes and function constants, and the
// dispatches the Backend builds for each op (checked against the kernel
// signatures read from the source).

func TestParamStructsMatchMSL(t *testing.T) {
	structs, err := parseStructs(Source())
	if err != nil {
		t.Fatal(err)
	}
	mslType := map[reflect.Kind]string{reflect.Int32: "int", reflect.Uint32: "uint", reflect.Float32: "float"}
	for name, v := range paramStructs {
		s, ok := structs[name]
		if !ok {
			t.Errorf("struct %s is not in the MSL source", name)
			continue
		}
		rt := reflect.TypeOf(v)
		if rt.NumField() != len(s.Fields) {
			t.Errorf("%s: Go has %d fields, MSL %d", name, rt.NumField(), len(s.Fields))
			continue
		}
		for i, f := range s.Fields {
			gf := rt.Field(i)
			if strings.ToLower(gf.Name) != strings.ReplaceAll(f.Name, "_", "") {
				t.Errorf("%s field %d: Go %s, MSL %s", name, i, gf.Name, f.Name)
			}
			if mslType[gf.Type.Kind()] != f.Type {
				t.Errorf("%s.%s: Go %s, MSL %s", name, f.Name, gf.Type, f.Type)
			}
		}
		if got := len(inline(v).Bytes); got != 4*len(s.Fields) {
			t.Errorf("%s encodes to %d bytes, want %d", name, got, 4*len(s.Fields))
		}
	}
	for name := range structs {
		if strings.HasSuffix(name, "Params") {
			if _, ok := paramStructs[name]; !ok {
				t.Errorf("MSL struct %s has no Go mirror in paramStructs", name)
			}
		}
	}
}

func TestDTypeCodesMatch(t *testing.T) {
	codes := parseDTypeCodes(Source())
	for n, dt := range map[string]dtype.DType{"DT_F32": dtype.F32, "DT_F16": dtype.F16, "DT_BF16": dtype.BF16, "DT_U32": dtype.U32, "DT_I32": dtype.I32} {
		if codes[n] != int(dt) {
			t.Errorf("%s = %d in MSL, dtype.%s = %d", n, codes[n], dt, dt)
		}
	}
}

func TestFunctionConstantsMatch(t *testing.T) {
	want := map[int]string{0: "BITS", 1: "GROUP", 2: "DT_X", 3: "DT_W", 4: "DT_Y", 5: "DT_S"}
	got := parseFunctionConstants(Source())
	if len(got) != len(want) {
		t.Fatalf("function constants %v, want %v", got, want)
	}
	for _, c := range got {
		if want[c.Index] != c.Name || c.Type != "int" {
			t.Errorf("function constant %d is %s %s, want int %s", c.Index, c.Type, c.Name, want[c.Index])
		}
	}
	vals := Consts{Bits: 4, Group: 64, X: dtype.BF16, W: dtype.F16, Y: dtype.F32, S: dtype.BF16}.Values()
	for i, v := range vals {
		if v.Index != i {
			t.Errorf("Consts.Values()[%d] has index %d", i, v.Index)
		}
	}
	if vals[0].Value != 4 || vals[1].Value != 64 || vals[2].Value != int32(dtype.BF16) || vals[4].Value != int32(dtype.F32) {
		t.Errorf("Consts.Values() = %v", vals)
	}
}

func TestParseKernels(t *testing.T) {
	ks, err := parseKernels(`
// kernel void commented_out(device float* x [[buffer(0)]])
kernel void k1(
    device const uchar* a [[buffer(0)]],   // comment
    device float* y [[buffer(2)]],
    constant P& p [[buffer(1)]],
    uint3 tg [[threadgroup_position_in_grid]],
    const uint lane [[thread_index_in_simdgroup]])
{ }`)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || ks[0].Name != "k1" || ks[0].Buffers() != 3 || len(ks[0].Params) != 5 {
		t.Fatalf("parsed %+v", ks)
	}
	p := ks[0].Params
	if p[0].Type != "device const uchar*" || p[0].Writable() || !p[1].Writable() || p[2].Type != "constant P&" || p[2].Buffer != 1 {
		t.Errorf("params %+v", p)
	}
	if p[3].Attr != "threadgroup_position_in_grid" || p[4].Type != "const uint" {
		t.Errorf("attributes %+v", p[3:])
	}
	glue := genGlue(ks, []funcConst{{Type: "int", Name: "BITS", Index: 0}})
	for _, want := range []string{
		"(device const uchar*)b[0]", "(device float*)b[2]", "*(constant P*)b[1]",
		"Attr<uint3>::get(t.tgpig)", "(uint)t.lane", `{"k1", k_k1, 3}`, "::BITS = (int)value;",
	} {
		if !strings.Contains(glue, want) {
			t.Errorf("glue lacks %q:\n%s", want, glue)
		}
	}
	for _, bad := range []string{
		"kernel void a(device float* x [[buffer(0)]], device float* y [[buffer(0)]]) {}",
		"kernel void a(device float* x [[buffer(1)]]) {}",
		"kernel void a(device float* x) {}",
		"kernel void a(uint x [[sample_id]]) {}",
		"kernel void a(device float* x [[buffer(0)]] {}",
		"kernel void a(float x [[buffer(0)]]) {}",
	} {
		if _, err := parseKernels(bad); err == nil {
			t.Errorf("parseKernels(%q): no error", bad)
		}
	}
}

// recorder is an Executor that records dispatches over host memory.
type recorder struct {
	ds []*Dispatch
}

type hostMem struct{ b []byte }

func (m *hostMem) Bytes() []byte { return m.b }
func (m *hostMem) Len() int64    { return int64(len(m.b)) }

func (r *recorder) Name() string                     { return "recorder" }
func (r *recorder) Alloc(n int64) (Memory, error)    { return &hostMem{make([]byte, n)}, nil }
func (r *recorder) Wrap(data []byte) (Memory, error) { return &hostMem{data}, nil }
func (r *recorder) Free(Memory)                      {}
func (r *recorder) Run(d *Dispatch) error            { r.ds = append(r.ds, d); return nil }
func (r *recorder) Sync() error                      { return nil }
func (r *recorder) Close() error                     { return nil }

// checkAgainstSource checks a dispatch against its kernel's signature: the
// kernel exists, every buffer index is bound, writes go to writable
// parameters, inline bytes match the argument struct, sizes are legal.
func checkAgainstSource(t *testing.T, d *Dispatch) {
	t.Helper()
	ks, err := parseKernels(Source())
	if err != nil {
		t.Fatal(err)
	}
	structs, _ := parseStructs(Source())
	var k *kernelSig
	for i := range ks {
		if ks[i].Name == d.Kernel {
			k = &ks[i]
		}
	}
	if k == nil {
		t.Fatalf("%s: no such kernel in the source", d)
	}
	if len(d.Args) != k.Buffers() {
		t.Fatalf("%s: %d arguments, the kernel takes %d", d, len(d.Args), k.Buffers())
	}
	for _, p := range k.Params {
		if p.Buffer < 0 {
			continue
		}
		a := d.Args[p.Buffer]
		if strings.HasSuffix(p.Type, "&") {
			st := strings.TrimSuffix(strings.TrimPrefix(p.Type, "constant "), "&")
			if a.Mem != nil || len(a.Bytes) != 4*len(structs[st].Fields) {
				t.Errorf("%s: argument %d (%s) has %d inline bytes, want %d", d, p.Buffer, p.Type, len(a.Bytes), 4*len(structs[st].Fields))
			}
			continue
		}
		if a.Mem == nil {
			t.Errorf("%s: argument %d (%s %s) is not a buffer", d, p.Buffer, p.Type, p.Name)
			continue
		}
		if a.Write && !p.Writable() {
			t.Errorf("%s: argument %d (%s %s) is written but declared const", d, p.Buffer, p.Type, p.Name)
		}
		if a.Offset < 0 || a.Offset+a.Len > a.Mem.Len() {
			t.Errorf("%s: argument %d range [%d,+%d) outside %d bytes", d, p.Buffer, a.Offset, a.Len, a.Mem.Len())
		}
	}
	n := d.Threads[0] * d.Threads[1] * d.Threads[2]
	if n <= 0 || n > 1024 || d.Groups[0] <= 0 || d.Groups[1] <= 0 || d.Groups[2] <= 0 {
		t.Errorf("%s: illegal sizes", d)
	}
}

// hostEnv is a Backend over a recorder, with helpers to make tensors.
type hostEnv struct {
	t   *testing.T
	b   *Backend
	rec *recorder
}

func newHostEnv(t *testing.T) *hostEnv {
	rec := &recorder{}
	return &hostEnv{t: t, b: NewWithExecutor(rec), rec: rec}
}

func (h *hostEnv) tensor(dt dtype.DType, shape ...int) kernels.Tensor {
	x, err := h.b.Alloc(dt, shape...)
	if err != nil {
		h.t.Fatal(err)
	}
	return x
}

// last returns the one dispatch recorded since the previous call.
func (h *hostEnv) last(err error) *Dispatch {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
	if len(h.rec.ds) != 1 {
		h.t.Fatalf("%d dispatches recorded, want 1", len(h.rec.ds))
	}
	d := h.rec.ds[0]
	h.rec.ds = nil
	checkAgainstSource(h.t, d)
	return d
}

// quantWeight returns a [experts?, n, k] quantized weight of zeros.
func (h *hostEnv) quantWeight(experts, n, k, bits, group int) *kernels.Weight {
	e := max(experts, 1)
	d := h.tensor(dtype.U32, e, n, k*bits/32)
	s := h.tensor(dtype.BF16, e, n, k/group)
	bi := h.tensor(dtype.BF16, e, n, k/group)
	w := &kernels.Weight{Data: view(d, 0, dtype.U32, n, k*bits/32), Scales: view(s, 0, dtype.BF16, n, k/group),
		Biases: view(bi, 0, dtype.BF16, n, k/group), Bits: bits, Group: group, N: n, K: k, Experts: experts}
	if experts > 0 {
		w.DataStride = int64(n * k * bits / 8)
		w.GroupStride = int64(n * k / group * 2)
	}
	return w
}

func params[T any](t *testing.T, a Arg) T {
	t.Helper()
	var v T
	if err := binary.Read(strings.NewReader(string(a.Bytes)), binary.LittleEndian, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDispatchDescriptions(t *testing.T) {
	h := newHostEnv(t)
	b := h.b
	act := dtype.BF16

	// Decode matmul: qmv, 8 rows per threadgroup of 2 SIMD-groups.
	w := h.quantWeight(0, 20, 256, 4, 64)
	x1, y1 := h.tensor(act, 1, 256), h.tensor(act, 1, 20)
	d := h.last(b.MatMul(y1, x1, w))
	if d.Kernel != "qmv" || d.Groups != [3]int{3, 1, 1} || d.Threads != [3]int{64, 1, 1} {
		t.Errorf("MatMul M=1: %s", d)
	}
	if d.Consts != (Consts{Bits: 4, Group: 64, X: act, Y: act, S: dtype.BF16}) {
		t.Errorf("MatMul consts %+v", d.Consts)
	}
	if p := params[qmvParams](t, d.Args[6]); p != (qmvParams{N: 20, K: 256, Slots: 1}) {
		t.Errorf("qmv params %+v", p)
	}
	if d.Args[5].Len != 0 {
		t.Errorf("MatMul binds %d bytes of ids", d.Args[5].Len)
	}
	if got, want := d.PipelineKey(), fmt.Sprintf("qmv[0=4,1=64,2=%d,3=0,4=%d,5=%d]", act, act, dtype.BF16); got != want {
		t.Errorf("pipeline key %s, want %s", got, want)
	}

	// Prefill matmul: tiled qmm, 32×32 tiles.
	x9, y9 := h.tensor(act, 40, 256), h.tensor(dtype.F32, 40, 20)
	d = h.last(b.MatMul(y9, x9, w))
	if d.Kernel != "qmm" || d.Groups != [3]int{1, 2, 1} || d.Threads != [3]int{128, 1, 1} || d.Consts.Y != dtype.F32 {
		t.Errorf("MatMul M=40: %s %+v", d, d.Consts)
	}

	// Dense weight.
	wd := &kernels.Weight{Data: h.tensor(dtype.F16, 20, 256), N: 20, K: 256}
	d = h.last(b.MatMul(y1, x1, wd))
	if d.Consts != (Consts{W: dtype.F16, X: act, Y: act}) {
		t.Errorf("dense consts %+v", d.Consts)
	}

	// Experts: one dispatch for all (row, slot) pairs, ids on the device,
	// every expert in range of the bound weight.
	we := h.quantWeight(8, 20, 256, 3, 32)
	ids := h.tensor(dtype.I32, 2, 4)
	xe, ye := h.tensor(act, 2, 256), h.tensor(act, 2, 4, 20)
	d = h.last(b.MatMulExperts(ye, xe, we, ids))
	if d.Kernel != "qmv" || d.Groups != [3]int{3, 8, 1} {
		t.Errorf("MatMulExperts: %s", d)
	}
	if p := params[qmvParams](t, d.Args[6]); p != (qmvParams{N: 20, K: 256, Slots: 4, XShared: 1, Experts: 8, WStride: 20 * 256 * 3 / 8, SStride: 20 * 8 * 2}) {
		t.Errorf("experts params %+v", p)
	}
	if d.Args[0].Len != 8*20*256*3/8 || d.Args[1].Len != 8*20*8*2 || d.Args[5].Len != 32 {
		t.Errorf("experts ranges: data %d scales %d ids %d", d.Args[0].Len, d.Args[1].Len, d.Args[5].Len)
	}
	xs := h.tensor(act, 8, 256)
	d = h.last(b.MatMulExperts(ye, xs, we, ids))
	if p := params[qmvParams](t, d.Args[6]); p.XShared != 0 {
		t.Errorf("per-slot x: %+v", p)
	}

	// The other ops.
	tbl := h.quantWeight(0, 100, 64, 6, 32)
	ids3 := h.tensor(dtype.I32, 3)
	ye3 := h.tensor(act, 3, 64)
	d = h.last(b.Embed(ye3, tbl, ids3, 8))
	if d.Kernel != "embed" || d.Groups != [3]int{1, 3, 1} || d.Threads != [3]int{64, 1, 1} {
		t.Errorf("Embed: %s", d)
	}
	xr := h.tensor(act, 5, 2816)
	d = h.last(b.RMSNorm(xr, xr, h.tensor(dtype.BF16, 2816), 1e-6))
	if d.Kernel != "rms_norm" || d.Groups != [3]int{5, 1, 1} || d.Threads != [3]int{256, 1, 1} {
		t.Errorf("RMSNorm: %s", d)
	}
	if p := params[rowParams](t, d.Args[3]); p != (rowParams{N: 2816, Eps: 1e-6, HasWeight: 1}) {
		t.Errorf("RMSNorm params %+v", p)
	}
	d = h.last(b.RMSNorm(xr, xr, kernels.Tensor{}, 1e-6))
	if p := params[rowParams](t, d.Args[3]); p.HasWeight != 0 || d.Args[1].Len != 0 {
		t.Errorf("RMSNorm without weight: %+v, weight range %d", p, d.Args[1].Len)
	}
	d = h.last(b.Softmax(h.tensor(dtype.F32, 2, 40), h.tensor(act, 2, 40)))
	if d.Kernel != "softmax" || d.Threads != [3]int{64, 1, 1} {
		t.Errorf("Softmax: %s", d)
	}
	q := h.tensor(act, 2, 16, 256)
	d = h.last(b.RoPE(q, h.tensor(dtype.I32, 2), h.tensor(dtype.F32, 128)))
	if p := params[ropeParams](t, d.Args[3]); d.Kernel != "rope" || p != (ropeParams{Rows: 2, Heads: 16, HalfDim: 128}) || d.Groups[0] != 16 {
		t.Errorf("RoPE: %s %+v", d, p)
	}
	e1, e2, e3 := h.tensor(act, 1000), h.tensor(act, 1000), h.tensor(act, 1000)
	for _, c := range []struct {
		run    func() error
		kernel string
	}{
		{func() error { return b.Add(e3, e1, e2) }, "add"}, {func() error { return b.GeluTanhMul(e3, e1, e2) }, "gelu_mul"},
		{func() error { return b.Scale(e3, e1, 2) }, "scale"}, {func() error { return b.Softcap(e3, e1, 30) }, "softcap"},
	} {
		d = h.last(c.run())
		if d.Kernel != c.kernel || d.Groups != [3]int{4, 1, 1} || d.Threads != [3]int{256, 1, 1} {
			t.Errorf("%s: %s", c.kernel, d)
		}
	}
	lg := h.tensor(dtype.F32, 3, 128)
	d = h.last(b.RouterTopK(h.tensor(dtype.F32, 3, 8), h.tensor(dtype.I32, 3, 8), lg, h.tensor(dtype.BF16, 128), 8))
	if p := params[routerParams](t, d.Args[4]); d.Kernel != "router_topk" || d.Groups != [3]int{3, 1, 1} || d.Threads != [3]int{32, 1, 1} || p != (routerParams{Experts: 128, K: 8, HasScale: 1}) {
		t.Errorf("RouterTopK: %s %+v", d, p)
	}
	cache := h.tensor(act, 1024, 8*256)
	d = h.last(b.StoreKV(cache, h.tensor(act, 1, 8*256), h.tensor(dtype.I32, 1)))
	if p := params[storeParams](t, d.Args[3]); d.Kernel != "store_kv" || p != (storeParams{Rows: 1, Cols: 2048, Capacity: 1024}) {
		t.Errorf("StoreKV: %s %+v", d, p)
	}
	vc := h.tensor(act, 1024, 8*256)
	ap := kernels.AttentionParams{Heads: 16, KVHeads: 8, HeadDim: 256, Window: 1024, Scale: 1}
	d = h.last(b.Attention(h.tensor(act, 1, 16*256), h.tensor(act, 1, 16*256), cache, vc, h.tensor(dtype.I32, 1), ap))
	if p := params[attnParams](t, d.Args[5]); d.Kernel != "attention" || d.Groups != [3]int{16, 1, 1} || d.Threads != [3]int{128, 1, 1} ||
		p != (attnParams{Heads: 16, KVHeads: 8, HeadDim: 256, Window: 1024, Scale: 1, Capacity: 1024}) {
		t.Errorf("Attention: %s %+v", d, p)
	}
	d = h.last(b.MoECombine(h.tensor(act, 2, 2816), h.tensor(act, 2, 8, 2816), h.tensor(dtype.F32, 2, 8)))
	if p := params[combineParams](t, d.Args[3]); d.Kernel != "moe_combine" || d.Groups != [3]int{11, 2, 1} || p != (combineParams{M: 2, N: 2816, Slots: 8}) {
		t.Errorf("MoECombine: %s %+v", d, p)
	}
}

func TestValidationErrors(t *testing.T) {
	h := newHostEnv(t)
	b := h.b
	act := dtype.BF16
	w := h.quantWeight(0, 20, 256, 4, 64)
	x, y := h.tensor(act, 1, 256), h.tensor(act, 1, 20)
	other := newHostEnv(t)
	foreign := other.tensor(act, 1, 256)
	ro, err := b.WrapHost(make([]byte, 40))
	if err != nil {
		t.Fatal(err)
	}
	roT := kernels.Tensor{Buf: ro, DType: act, Shape: []int{1, 20}}
	freed := h.tensor(act, 1, 20)
	b.Free(freed)
	bad3 := *w
	bad3.Bits = 7
	we := h.quantWeight(4, 20, 256, 4, 64)
	ids := h.tensor(dtype.I32, 1, 2)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"wrong K", b.MatMul(y, h.tensor(act, 1, 128), w), "does not give"},
		{"wrong N", b.MatMul(h.tensor(act, 1, 21), x, w), "does not give"},
		{"7 bits", b.MatMul(y, x, &bad3), "7-bit"},
		{"nil weight", b.MatMul(y, x, nil), "no weight"},
		{"3D in MatMul", b.MatMul(y, x, we), "MatMulExperts"},
		{"2D in MatMulExperts", b.MatMulExperts(h.tensor(act, 1, 2, 20), x, w, ids), "MatMul"},
		{"foreign tensor", b.MatMul(y, foreign, w), "not memory of this backend"},
		{"read-only output", b.MatMul(roT, x, w), "read-only"},
		{"freed tensor", b.MatMul(freed, x, w), "freed"},
		{"no buffer", b.MatMul(kernels.Tensor{DType: act, Shape: []int{1, 20}}, x, w), "no buffer"},
		{"overrun", b.Add(kernels.Tensor{Buf: y.Buf, DType: act, Shape: []int{30}}, y, y), "overruns"},
		{"unaligned", b.Add(kernels.Tensor{Buf: y.Buf, Offset: 1, DType: act, Shape: []int{2}}, y, y), "not aligned"},
		{"output overlaps input", b.MatMul(kernels.Tensor{Buf: x.Buf, DType: act, Shape: []int{1, 20}}, x, w), "overlaps"},
		{"float ids", b.MatMulExperts(h.tensor(act, 1, 2, 20), x, we, h.tensor(dtype.F32, 1, 2)), "I32"},
		{"bad x rows", b.MatMulExperts(h.tensor(act, 1, 2, 20), h.tensor(act, 3, 256), we, ids), "[M·k, K]"},
		{"add shapes", b.Add(h.tensor(act, 10), h.tensor(act, 10), h.tensor(act, 11)), "does not match"},
		{"softcap 0", b.Softcap(y, y, 0), "cap"},
		{"partial alias", b.Scale(kernels.Tensor{Buf: x.Buf, Offset: 2, DType: act, Shape: []int{10}}, kernels.Tensor{Buf: x.Buf, DType: act, Shape: []int{10}}, 2), "partly overlaps"},
		{"norm weight", b.RMSNorm(y, y, h.tensor(act, 19), 1e-6), "weight"},
		{"rope shape", b.RoPE(h.tensor(act, 2, 10), h.tensor(dtype.I32, 2), h.tensor(dtype.F32, 3)), "is not [T="},
		{"router k", b.RouterTopK(h.tensor(dtype.F32, 1, 40), h.tensor(dtype.I32, 1, 40), h.tensor(dtype.F32, 1, 128), kernels.Tensor{}, 40), "k=40"},
		{"router experts", b.RouterTopK(h.tensor(dtype.F32, 1, 2), h.tensor(dtype.I32, 1, 2), h.tensor(dtype.F32, 1, 1000), kernels.Tensor{}, 2), "E ≤"},
		{"attention heads", b.Attention(h.tensor(act, 1, 3*64), h.tensor(act, 1, 3*64), h.tensor(act, 8, 2*64), h.tensor(act, 8, 2*64), h.tensor(dtype.I32, 1), kernels.AttentionParams{Heads: 3, KVHeads: 2, HeadDim: 64}), "KVHeads dividing"},
		{"attention window", b.Attention(h.tensor(act, 1, 64), h.tensor(act, 1, 64), h.tensor(act, 8, 64), h.tensor(act, 8, 64), h.tensor(dtype.I32, 1), kernels.AttentionParams{Heads: 1, KVHeads: 1, HeadDim: 64, Window: 16}), "window of 16"},
		{"attention head dim", b.Attention(h.tensor(act, 1, 1024), h.tensor(act, 1, 1024), h.tensor(act, 8, 1024), h.tensor(act, 8, 1024), h.tensor(dtype.I32, 1), kernels.AttentionParams{Heads: 1, KVHeads: 1, HeadDim: 1024}), "HeadDim"},
		{"storekv cols", b.StoreKV(h.tensor(act, 8, 64), h.tensor(act, 1, 32), h.tensor(dtype.I32, 1)), "cache"},
		{"combine weights dtype", b.MoECombine(h.tensor(act, 1, 8), h.tensor(act, 1, 2, 8), h.tensor(act, 1, 2)), "F32"},
		{"embed width", b.Embed(h.tensor(act, 1, 100), w, h.tensor(dtype.I32, 1), 1), "is not [1, 256]"},
		{"upload size", b.Upload(y, make([]byte, 3)), "Upload of 3 bytes"},
		{"upload read-only", b.Upload(roT, make([]byte, 40)), "read-only"},
		{"download size", b.Download(make([]byte, 3), y), "Download"},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, c.err, c.want)
		}
	}
	if len(h.rec.ds) != 0 {
		t.Errorf("%d dispatches recorded for invalid calls", len(h.rec.ds))
	}
	if _, err := b.Alloc(dtype.Invalid, 3); err == nil {
		t.Error("Alloc of an invalid dtype: no error")
	}
	if _, err := b.Alloc(act, -1); err == nil {
		t.Error("Alloc of a negative shape: no error")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(y, y, y); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("op after Close: %v", err)
	}
	if _, err := b.Alloc(act, 1); err == nil {
		t.Error("Alloc after Close: no error")
	}
}

func TestEmptyOpsDispatchNothing(t *testing.T) {
	h := newHostEnv(t)
	b := h.b
	e := h.tensor(dtype.BF16, 0, 16)
	w := h.quantWeight(0, 16, 64, 4, 64)
	for _, err := range []error{
		b.Add(e, e, e),
		b.RMSNorm(e, e, kernels.Tensor{}, 1e-6),
		b.MatMul(h.tensor(dtype.BF16, 0, 16), h.tensor(dtype.BF16, 0, 64), w),
	} {
		if err != nil {
			t.Error(err)
		}
	}
	if len(h.rec.ds) != 0 {
		t.Errorf("%d dispatches for empty tensors", len(h.rec.ds))
	}
}

// mslTypeWords are MSL type names and keywords that are valid C++
// identifiers, so g++ (compiling the kernels through the shim) would accept
// them as names where the Metal compiler will not.
var mslTypeWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`half bfloat kernel vertex fragment device constant threadgroup thread
		sampler texture1d texture2d texture3d array visible stitchable object mesh ray_data
		simdgroup_matrix packed_float2 packed_float3 packed_float4 packed_half2 packed_half4 uchar ushort uint ulong`) {
		m[w] = true
	}
	for _, b := range []string{"half", "bfloat", "float", "int", "uint", "short", "ushort", "char", "uchar", "bool", "long", "ulong"} {
		for _, n := range []string{"2", "3", "4", "2x2", "3x3", "4x4"} {
			m[b+n] = true
		}
	}
	return m
}()

func TestNoMSLKeywordsAsNames(t *testing.T) {
	src := stripComments(Source())
	toks := regexpTokens.FindAllString(src, -1)
	types := map[string]bool{"int": true, "uint": true, "float": true, "bool": true, "ulong": true, "ushort": true, "uchar": true, "short": true, "char": true}
	structs, _ := parseStructs(src)
	for n := range structs {
		types[n] = true
	}
	for i := 1; i+1 < len(toks); i++ {
		if !mslTypeWords[toks[i]] || !types[toks[i-1]] {
			continue
		}
		switch toks[i+1] {
		case ";", ",", ")", "=", "[":
			t.Errorf("%q declares a name that is an MSL keyword or type (%s %s %s)", toks[i], toks[i-1], toks[i], toks[i+1])
		}
	}
	// The lint would have caught the field this test was written for.
	if !regexpTokens.MatchString("int half;") {
		t.Fatal("tokenizer broken")
	}
}

var regexpTokens = regexp.MustCompile(`[A-Za-z_]\w*|[^\sA-Za-z_]`)
