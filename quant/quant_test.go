package quant

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
)

var (
	allBits   = []int{2, 3, 4, 5, 6, 8}
	allGroups = []int{32, 64, 128}
)

// packNaive is the stream layout written out bit by bit: bit b of level i
// is stream bit i·bits+b, which is bit n%32 of word n/32.
func packNaive(q []uint8, bits int) []uint32 {
	out := make([]uint32, len(q)*bits/32)
	for i, v := range q {
		for b := range bits {
			if v>>b&1 != 0 {
				n := i*bits + b
				out[n/32] |= 1 << (n % 32)
			}
		}
	}
	return out
}

func TestPackUnpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, bits := range allBits {
		for _, group := range allGroups {
			rows, cols := 3, 2*group
			q := make([]uint8, rows*cols)
			for i := range q {
				q[i] = uint8(rng.IntN(1 << bits))
			}
			packed, err := Pack(q, bits)
			if err != nil {
				t.Fatal(err)
			}
			if len(packed) != rows*PackedWords(cols, bits) {
				t.Fatalf("%d bits: %d words, want %d", bits, len(packed), rows*PackedWords(cols, bits))
			}
			want := packNaive(q, bits)
			for i := range want {
				if packed[i] != want[i] {
					t.Fatalf("%d bits g%d: word %d = %#08x, bit-by-bit layout gives %#08x", bits, group, i, packed[i], want[i])
				}
			}
			// Row by row equals the whole matrix at once.
			for r := range rows {
				row, _ := Pack(q[r*cols:(r+1)*cols], bits)
				words := PackedWords(cols, bits)
				for i, w := range row {
					if packed[r*words+i] != w {
						t.Fatalf("%d bits: row %d packed alone differs at word %d", bits, r, i)
					}
				}
			}
			back, err := Unpack(packed, bits, len(q))
			if err != nil {
				t.Fatal(err)
			}
			for i := range q {
				if back[i] != q[i] {
					t.Fatalf("%d bits g%d: unpack(pack(q))[%d] = %d, want %d", bits, group, i, back[i], q[i])
				}
			}
		}
	}
}

// TestPackLayout pins the layout with words worked out by hand.
func TestPackLayout(t *testing.T) {
	tests := []struct {
		name string
		bits int
		q    map[int]uint8 // nonzero levels; the rest are 0
		n    int
		want []uint32
	}{
		{"4-bit, element 0 lowest", 4, map[int]uint8{0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8}, 8, []uint32{0x87654321}},
		{"8-bit", 8, map[int]uint8{0: 1, 1: 2, 2: 3, 3: 4, 4: 0xff}, 8, []uint32{0x04030201, 0x000000ff}},
		{"2-bit", 2, map[int]uint8{0: 3, 15: 2}, 16, []uint32{0x80000003}},
		// Level 6 of a 5-bit row sits at stream bits 30..34: its low two
		// bits end word 0, its high three start word 1. 23 = 0b10111.
		{"5-bit straddle", 5, map[int]uint8{6: 23}, 32, []uint32{0xC0000000, 0x5, 0, 0, 0}},
		// Level 10 of a 3-bit row sits at bits 30..32. 5 = 0b101.
		{"3-bit straddle", 3, map[int]uint8{10: 5}, 32, []uint32{0x40000000, 0x1, 0}},
		// Level 5 of a 6-bit row sits at bits 30..35. 63 = 0b111111.
		{"6-bit straddle", 6, map[int]uint8{5: 63}, 16, []uint32{0xC0000000, 0xF, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := make([]uint8, tc.n)
			for i, v := range tc.q {
				q[i] = v
			}
			got, err := Pack(q, tc.bits)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d words, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("word %d = %#08x, want %#08x", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestPackErrors(t *testing.T) {
	tests := []struct {
		name string
		q    []uint8
		bits int
		want string
	}{
		{"7 bits", make([]uint8, 32), 7, "7 bits"},
		{"partial word", make([]uint8, 9), 4, "whole 32-bit words"},
		{"level too wide", append(make([]uint8, 7), 16), 4, "does not fit"},
	}
	for _, tc := range tests {
		if _, err := Pack(tc.q, tc.bits); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
	if _, err := Unpack(make([]uint32, 1), 4, 9); err == nil {
		t.Error("Unpack past the end: no error")
	}
}

// weights draws test matrices of several shapes of distribution.
func weights(rng *rand.Rand, kind string, n int) []float32 {
	w := make([]float32, n)
	for i := range w {
		var v float64
		switch kind {
		case "normal":
			v = rng.NormFloat64() * 0.02
		case "positive":
			v = math.Abs(rng.NormFloat64())*0.05 + 0.01
		case "negative":
			v = -math.Abs(rng.NormFloat64())*0.05 - 0.01
		case "outliers":
			v = rng.NormFloat64() * 0.02
			if rng.IntN(50) == 0 {
				v *= 40
			}
		case "uniform":
			v = rng.Float64()*2 - 1
		case "small":
			v = rng.NormFloat64() * 1e-9 // below the 1e-7 minimum scale
		}
		// Checkpoint weights are bf16.
		w[i] = dtype.BF16ToF32(dtype.F32ToBF16(float32(v)))
	}
	return w
}

// TestQuantizeError checks every width and group size: each dequantized
// weight is within half a step |scale|/2 of the input, except weights that
// fall outside the group's range [bias, bias + n·scale] and are clipped to
// the nearest end. MLX's rescaling (scale = edge/q0) can shorten the range
// by up to one step at the end opposite the exact edge, and rounding the
// scale and the bias (= edge, up to n steps from 0) to bf16, each off by up
// to 2^-8 relative, moves the far end by up to (2n+1)/256 steps more: at 8
// bits clipped weights can be off by more than one step (logged).
func TestQuantizeError(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	kinds := []string{"normal", "positive", "negative", "outliers", "uniform", "small"}
	for _, bits := range allBits {
		for _, group := range allGroups {
			nbins := float64(int(1)<<bits - 1)
			var clipped, beyondStep, total int
			for _, kind := range kinds {
				rows, cols := 8, 2*group
				w := weights(rng, kind, rows*cols)
				packed, scales, biases, err := Quantize(w, rows, cols, bits, group)
				if err != nil {
					t.Fatal(err)
				}
				deq, err := Dequantize(packed, scales, biases, rows, cols, bits, group)
				if err != nil {
					t.Fatal(err)
				}
				for i := range w {
					g := i / group
					s, b := float64(scales[g]), float64(biases[g])
					if float64(dtype.BF16ToF32(dtype.F32ToBF16(float32(s)))) != s {
						t.Fatalf("scale %g is not a bf16 value", s)
					}
					x := (float64(w[i]) - b) / s // the unclipped level
					err := math.Abs(float64(deq[i]) - float64(w[i]))
					slack := 1e-6 * (math.Abs(float64(w[i])) + math.Abs(b) + math.Abs(s)*nbins) // float32 arithmetic
					total++
					if x >= -0.5 && x <= nbins+0.5 {
						if err > math.Abs(s)/2+slack {
							t.Fatalf("%d bits g%d %s: weight %d = %g dequantizes to %g: off by %.3g steps (> 1/2)",
								bits, group, kind, i, w[i], deq[i], err/math.Abs(s))
						}
						continue
					}
					clipped++
					if err > math.Abs(s)+slack {
						beyondStep++
					}
					if bound := math.Abs(s)*(1+(2*nbins+1)/256) + slack; err > bound {
						t.Fatalf("%d bits g%d %s: clipped weight %d = %g dequantizes to %g: off by %.3g steps (> %.3g)",
							bits, group, kind, i, w[i], deq[i], err/math.Abs(s), bound/math.Abs(s))
					}
				}
			}
			if beyondStep > 0 {
				t.Logf("%d bits g%d: %d of %d weights clipped, %d of them by more than one step", bits, group, clipped, total, beyondStep)
			}
		}
	}
}

// TestRoundingModes checks that MLX's own roundings (q from the float32
// scale and bias) differ from Stored only by one level, and only where the
// stored scale and bias move a weight across a rounding boundary.
func TestRoundingModes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, r := range []Rounding{MLX, MLXMetal} {
		for _, bits := range allBits {
			rows, cols, group := 16, 128, 64
			w := weights(rng, "normal", rows*cols)
			ref := Params{Bits: bits, Group: group}
			p := ref
			p.Rounding = r
			words := rows * PackedWords(cols, bits)
			pa, sa, ba := make([]uint32, words), make([]float32, rows*cols/group), make([]float32, rows*cols/group)
			pb, sb, bb := make([]uint32, words), make([]float32, rows*cols/group), make([]float32, rows*cols/group)
			if err := ref.QuantizeInto(pa, sa, ba, w, rows, cols); err != nil {
				t.Fatal(err)
			}
			if err := p.QuantizeInto(pb, sb, bb, w, rows, cols); err != nil {
				t.Fatal(err)
			}
			qa, _ := Unpack(pa, bits, rows*cols)
			qb, _ := Unpack(pb, bits, rows*cols)
			var moved int
			for i := range qa {
				d := int(qa[i]) - int(qb[i])
				if d < -1 || d > 1 {
					t.Fatalf("%v %d bits: level %d is %d, stored rounding gives %d", r, bits, i, qb[i], qa[i])
				}
				if d != 0 {
					moved++
				}
			}
			for g := range sa {
				// Normal weights have both signs, so Metal's max-from-0 rule
				// changes nothing here: the scales and biases agree.
				if sa[g] != sb[g] || ba[g] != bb[g] {
					t.Fatalf("%v %d bits: group %d scale/bias %g/%g, stored rounding gives %g/%g", r, bits, g, sb[g], bb[g], sa[g], ba[g])
				}
			}
			t.Logf("%v %d bits: %d of %d levels differ by one from stored rounding", r, bits, moved, len(qa))
		}
	}
}

// TestGroupRules pins MLX's scale, bias, sign and edge rules on small groups.
func TestGroupRules(t *testing.T) {
	group := func(vals ...float32) []float32 {
		w := make([]float32, 32)
		copy(w, vals)
		return w
	}
	tests := []struct {
		name     string
		r        Rounding
		bits     int
		w        []float32
		scale    float32 // stored
		bias     float32 // stored
		q0, qEnd uint8   // levels of w[0] and w[1]
	}{
		// The min has the larger magnitude: positive scale, bias = min.
		// range 1.5/15 = 0.1, q0 = rint(-1/0.1) = -10, scale = -1/-10 = 0.1.
		{"min side", Stored, 4, group(-1, 0.5), bf(0.1), -1, 0, 15},
		// The max has the larger magnitude: negative scale, bias = max.
		{"max side", Stored, 4, group(1, -0.5), bf(-0.1), 1, 0, 15},
		// An all-zero group: scale -1e-7 (the max side, eps), bias 0.
		{"zeros", Stored, 4, group(), bf(-1e-7), 0, 0, 0},
		// All-positive group: min is 0.25 (the rest of the group is 0...),
		// so use a group without zeros below.
		// Metal starts the max at 0: an all-negative group spans [min, 0].
		// range 2/3 → scale 0.6667, q0 = rint(-2/0.6667) = -3, scale = 0.6667, bias -2.
		{"metal all-negative", MLXMetal, 2, fill(-2, -1), bf(2.0 / 3), -2, 0, 2},
		// The CPU max is the group's own: range 1/3 → q0 = rint(-2/(1/3)) = -6,
		// scale = 1/3, bias = -2; -1 is level 3.
		{"cpu all-negative", MLX, 2, fill(-2, -1), bf(1.0 / 3), -2, 0, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Params{Bits: tc.bits, Group: 32, Rounding: tc.r}
			packed := make([]uint32, PackedWords(32, tc.bits))
			s, b := make([]float32, 1), make([]float32, 1)
			if err := p.QuantizeInto(packed, s, b, tc.w, 1, 32); err != nil {
				t.Fatal(err)
			}
			if s[0] != tc.scale || b[0] != tc.bias {
				t.Fatalf("scale, bias = %g, %g; want %g, %g", s[0], b[0], tc.scale, tc.bias)
			}
			q, _ := Unpack(packed, tc.bits, 32)
			if q[0] != tc.q0 || q[1] != tc.qEnd {
				t.Fatalf("levels of w[0], w[1] = %d, %d; want %d, %d", q[0], q[1], tc.q0, tc.qEnd)
			}
		})
	}
}

func bf(x float32) float32 { return dtype.BF16ToF32(dtype.F32ToBF16(x)) }

// fill returns a 32-element group: first a, then b everywhere else.
func fill(a, b float32) []float32 {
	w := make([]float32, 32)
	for i := range w {
		w[i] = b
	}
	w[0] = a
	return w
}

func TestStorageTypes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	w := weights(rng, "normal", 4*64)
	for _, st := range []dtype.DType{dtype.BF16, dtype.F16, dtype.F32} {
		p := Params{Bits: 4, Group: 64, Type: st}
		packed, s, b := make([]uint32, 4*8), make([]float32, 4), make([]float32, 4)
		if err := p.QuantizeInto(packed, s, b, w, 4, 64); err != nil {
			t.Fatal(err)
		}
		for g := range s {
			if roundTo(s[g], st) != s[g] || roundTo(b[g], st) != b[g] {
				t.Fatalf("%s: scale %g or bias %g is not a %s value", st, s[g], b[g], st)
			}
		}
	}
}

func TestQuantizeErrors(t *testing.T) {
	w := make([]float32, 64)
	nan := make([]float32, 128)
	nan[70] = float32(math.NaN())
	inf := make([]float32, 64)
	inf[3] = float32(math.Inf(-1))
	tests := []struct {
		name                    string
		w                       []float32
		rows, cols, bits, group int
		want                    string
	}{
		{"7 bits", w, 1, 64, 7, 64, "7 bits"},
		{"group 16", w, 1, 64, 4, 16, "group size 16"},
		{"width not a multiple of the group", w, 1, 64, 4, 128, "not a multiple"},
		{"length", w, 2, 64, 4, 64, "64 weights for a [2, 64]"},
		{"NaN", nan, 2, 64, 4, 64, "row 1: group 0: weight is NaN"},
		{"Inf", inf, 1, 64, 4, 32, "row 0: group 0: weight is NaN or infinite"},
	}
	for _, tc := range tests {
		_, _, _, err := Quantize(tc.w, tc.rows, tc.cols, tc.bits, tc.group)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
	if _, err := Dequantize(make([]uint32, 8), make([]float32, 1), make([]float32, 2), 1, 64, 4, 64); err == nil {
		t.Error("Dequantize with mismatched biases: no error")
	}
	if _, err := ParseRounding("nearest"); err == nil {
		t.Error(`ParseRounding("nearest"): no error`)
	}
	for r := Stored; r <= MLXMetal; r++ {
		if got, err := ParseRounding(r.String()); err != nil || got != r {
			t.Errorf("ParseRounding(%q) = %v, %v", r.String(), got, err)
		}
	}
}

// TestLevelRounding checks the fast level roundings against math's on ties,
// their neighbours and random values.
func TestLevelRounding(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var xs []float32
	for k := range 300 {
		for _, d := range []float32{-1, 0, 1} {
			x := float32(k) + 0.5
			xs = append(xs, math.Nextafter32(x, x+d), float32(k)+d*1e-3, x)
		}
	}
	for range 100000 {
		xs = append(xs, rng.Float32()*300)
	}
	for _, x := range xs {
		if x <= 0 {
			continue
		}
		if got, want := levelEven(x), uint64(math.RoundToEven(float64(x))); got != want {
			t.Fatalf("levelEven(%v) = %d, want %d", x, got, want)
		}
		if got, want := levelAway(x), uint64(math.Round(float64(x))); got != want {
			t.Fatalf("levelAway(%v) = %d, want %d", x, got, want)
		}
	}
}

func BenchmarkQuantize(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	rows, cols := 256, 2816
	w := weights(rng, "normal", rows*cols)
	for _, bits := range []int{4, 8} {
		p := Params{Bits: bits, Group: 64}
		packed := make([]uint32, rows*PackedWords(cols, bits))
		s, bi := make([]float32, rows*cols/64), make([]float32, rows*cols/64)
		b.Run(map[int]string{4: "4bit", 8: "8bit"}[bits], func(b *testing.B) {
			b.SetBytes(int64(len(w) * 2))
			for b.Loop() {
				if err := p.QuantizeInto(packed, s, bi, w, rows, cols); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
