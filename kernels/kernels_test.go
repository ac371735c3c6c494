package kernels

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
)

type buf int64

func (b buf) Len() int64 { return int64(b) }

func tensor(dt dtype.DType, shape ...int) Tensor {
	return Tensor{Buf: buf(1 << 30), DType: dt, Shape: shape}
}

// q4 is a valid 4-bit group-64 weight [N=8, K=128].
func q4() Weight {
	return Weight{Data: tensor(dtype.U32, 8, 16), Scales: tensor(dtype.BF16, 8, 2), Biases: tensor(dtype.BF16, 8, 2),
		Bits: 4, Group: 64, N: 8, K: 128}
}

func TestWeightValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(w *Weight)
		want   string // "" for valid
	}{
		{"4-bit g64", func(w *Weight) {}, ""},
		{"dense bf16", func(w *Weight) { *w = Weight{Data: tensor(dtype.BF16, 8, 128), N: 8, K: 128} }, ""},
		{"dense of ints", func(w *Weight) { *w = Weight{Data: tensor(dtype.I32, 8, 128), N: 8, K: 128} }, "dense weight has dtype I32"},
		{"dense wrong size", func(w *Weight) { *w = Weight{Data: tensor(dtype.F32, 8, 127), N: 8, K: 128} }, "does not hold"},
		{"7 bits", func(w *Weight) { w.Bits = 7 }, "7-bit"},
		{"group 16", func(w *Weight) { w.Group = 16 }, "group 16"},
		{"K not a multiple of the group", func(w *Weight) { w.K, w.Group = 96, 64 }, "not a multiple of the group"},
		{"packed as F32", func(w *Weight) { w.Data.DType = dtype.F32 }, "want U32"},
		{"packed too short", func(w *Weight) { w.Data.Shape = []int{8, 15} }, "packed data"},
		{"scales of ints", func(w *Weight) { w.Scales.DType = dtype.U8 }, "scales/biases have dtype"},
		{"biases wrong shape", func(w *Weight) { w.Biases.Shape = []int{8, 3} }, "groups"},
		{"empty", func(w *Weight) { w.N = 0 }, "shape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := q4()
			c.mutate(&w)
			err := w.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestExpertViews(t *testing.T) {
	w := q4()
	w.Experts, w.DataStride, w.GroupStride = 4, 1000, 100
	e, err := w.Expert(3)
	if err != nil {
		t.Fatal(err)
	}
	if e.Data.Offset != 3000 || e.Scales.Offset != 300 || e.Biases.Offset != 300 || e.Experts != 0 {
		t.Fatalf("expert 3 at data %d, scales %d, biases %d", e.Data.Offset, e.Scales.Offset, e.Biases.Offset)
	}
	for _, bad := range []int{-1, 4} {
		if _, err := w.Expert(bad); err == nil {
			t.Errorf("Expert(%d) of 4: want an error", bad)
		}
	}
	flat := q4()
	if _, err := flat.Expert(0); err == nil {
		t.Error("Expert on a 2D weight: want an error")
	}
}

func TestTensorViews(t *testing.T) {
	x := tensor(dtype.F32, 4, 6)
	if x.Rows() != 4 || x.Cols() != 6 || x.Bytes() != 96 || x.Numel() != 24 {
		t.Fatalf("rows %d cols %d bytes %d numel %d", x.Rows(), x.Cols(), x.Bytes(), x.Numel())
	}
	r, err := x.RowRange(1, 3)
	if err != nil || r.Offset != 24 || r.Rows() != 2 {
		t.Fatalf("RowRange(1,3): %v at offset %d with %d rows", err, r.Offset, r.Rows())
	}
	if _, err := x.RowRange(3, 5); err == nil {
		t.Error("RowRange past the end: want an error")
	}
	y, err := x.Reshape(2, 12)
	if err != nil || y.Cols() != 12 || x.Cols() != 6 {
		t.Fatalf("Reshape: %v; the original changed: %v", err, x.Shape)
	}
	if _, err := x.Reshape(5, 5); err == nil {
		t.Error("Reshape to another size: want an error")
	}
	if !(Tensor{}).IsZero() || x.IsZero() {
		t.Error("IsZero")
	}
}

func TestShapeInterned(t *testing.T) {
	a, b := Shape(2, 3), Shape(2, 3)
	if &a[0] != &b[0] || len(a) != 2 || a[1] != 3 {
		t.Fatalf("Shape(2, 3) not shared: %v %v", a, b)
	}
	if c := Shape(2, 3, 0); len(c) != 3 {
		t.Fatalf("Shape(2, 3, 0) = %v", c)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Shape(7, 11) }); n != 0 {
		t.Fatalf("Shape allocates %v times per call", n)
	}
}

func TestTopKOf(t *testing.T) {
	nan := float32(math.NaN())
	negZero := float32(math.Copysign(0, -1))
	for _, c := range []struct {
		row  []float32
		k    int
		want []int
	}{
		{[]float32{1, 3, 2}, 2, []int{1, 2}},
		{[]float32{2, 5, 5, 2}, 3, []int{1, 2, 0}},                             // ties: the lower column first
		{[]float32{nan, -1, nan, float32(math.Inf(-1))}, 4, []int{1, 3, 0, 2}}, // NaNs after every number
		{[]float32{negZero, 0, negZero}, 3, []int{0, 1, 2}},                    // -0 equals +0
		{[]float32{4}, 5, []int{0}},                                            // k beyond the row
	} {
		if got := TopKOf(c.row, c.k); !slices.Equal(got, c.want) {
			t.Errorf("TopKOf(%v, %d) = %v, want %v", c.row, c.k, got, c.want)
		}
	}
}
