package dtype

import (
	"math"
	"math/rand/v2"
	"testing"
)

func isNaNBF16(h uint16) bool { return h&0x7f80 == 0x7f80 && h&0x007f != 0 }

// TestBF16RoundTripExhaustive widens every bf16 bit pattern and narrows it
// back: exact for all values, NaN stays NaN with its sign.
func TestBF16RoundTripExhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := BF16ToF32(h)
		if math.Float32bits(f) != uint32(h)<<16 {
			t.Fatalf("BF16ToF32(%#04x) = %#08x, want %#08x", h, math.Float32bits(f), uint32(h)<<16)
		}
		back := F32ToBF16(f)
		if isNaNBF16(h) {
			if !isNaNBF16(back) || back&0x8000 != h&0x8000 || back&0x0040 == 0 {
				t.Fatalf("NaN %#04x came back as %#04x (want a quiet NaN of the same sign)", h, back)
			}
			if h&0x0040 != 0 && back != h {
				t.Fatalf("quiet NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != h {
			t.Fatalf("round trip %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

// refBF16 rounds a finite or infinite float32 to bf16 by comparing the
// distances to its two bf16 neighbours in float64 (ties to the even one).
func refBF16(f float32) uint16 {
	u := math.Float32bits(f)
	lo := uint16(u >> 16) // truncation: the neighbour towards zero
	hi := lo + 1          // the neighbour away from zero (may be inf)
	if u&0xffff == 0 {
		return lo
	}
	v := math.Abs(float64(f))
	dl := v - math.Abs(float64(BF16ToF32(lo)))
	var dh float64
	if hi&0x7fff == 0x7f80 { // the next value is infinity: IEEE treats it as 2^128
		dh = math.Ldexp(1, 128) - v
	} else {
		dh = math.Abs(float64(BF16ToF32(hi))) - v
	}
	switch {
	case dl < dh:
		return lo
	case dh < dl:
		return hi
	case lo&1 == 0:
		return lo
	default:
		return hi
	}
}

func TestF32ToBF16Rounding(t *testing.T) {
	cases := []struct {
		name string
		in   uint32
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"tie to even (down)", 0x3f808000, 0x3f80},
		{"tie to even (up)", 0x3f818000, 0x3f82},
		{"just above half", 0x3f808001, 0x3f81},
		{"just below half", 0x3f807fff, 0x3f80},
		{"negative tie to even (down)", 0xbf808000, 0xbf80},
		{"negative tie to even (up)", 0xbf818000, 0xbf82},
		{"negative just above half", 0xbf808001, 0xbf81},
		{"max finite bf16", 0x7f7f0000, 0x7f7f},
		{"below the overflow tie", 0x7f7f7fff, 0x7f7f},
		{"overflow tie rounds to inf", 0x7f7f8000, 0x7f80},
		{"max float32 overflows", 0x7f7fffff, 0x7f80},
		{"negative overflow", 0xff7fffff, 0xff80},
		{"inf", 0x7f800000, 0x7f80},
		{"-inf", 0xff800000, 0xff80},
		{"zero", 0, 0},
		{"negative zero", 0x80000000, 0x8000},
		{"smallest subnormal rounds to zero", 0x00000001, 0x0000},
		{"subnormal tie to even (zero)", 0x00008000, 0x0000},
		{"subnormal above the tie", 0x00008001, 0x0001},
		{"subnormal tie to even (up)", 0x00018000, 0x0002},
		{"negative subnormal", 0x80008001, 0x8001},
		{"largest subnormal rounds to the smallest normal", 0x007fffff, 0x0080},
		{"NaN with a low payload stays NaN", 0x7f800001, 0x7fc0},
		{"negative quiet NaN", 0xffc00000, 0xffc0},
	}
	for _, c := range cases {
		if got := F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("%s: F32ToBF16(%#08x) = %#04x, want %#04x", c.name, c.in, got, c.want)
		}
		if f := math.Float32frombits(c.in); !math.IsNaN(float64(f)) {
			if r := refBF16(f); r != c.want {
				t.Errorf("%s: reference gives %#04x, table says %#04x", c.name, r, c.want)
			}
		}
	}
	// Random float32s (all exponents), and every low-half pattern around a few
	// bf16 values, against the reference.
	r := rand.New(rand.NewPCG(1, 2))
	check := func(u uint32) {
		f := math.Float32frombits(u)
		if math.IsNaN(float64(f)) {
			return
		}
		if got, want := F32ToBF16(f), refBF16(f); got != want {
			t.Fatalf("F32ToBF16(%#08x) = %#04x, want %#04x", u, got, want)
		}
	}
	for range 2_000_000 {
		check(r.Uint32())
	}
	for _, hi := range []uint32{0x0000, 0x0001, 0x3f80, 0x3f81, 0x7f7e, 0x7f7f, 0x8000, 0xbf80, 0xff7f} {
		for lo := range uint32(1 << 16) {
			check(hi<<16 | lo)
		}
	}
}

func TestF16(t *testing.T) {
	cases := []struct {
		h uint16
		f float32
	}{
		{0x3c00, 1}, {0xbc00, -1}, {0x7bff, 65504}, {0x0001, float32(math.Ldexp(1, -24))},
		{0x0400, float32(math.Ldexp(1, -14))}, {0x3555, 0.33325195}, {0x7c00, float32(math.Inf(1))},
		{0xfc00, float32(math.Inf(-1))}, {0x0000, 0},
	}
	for _, c := range cases {
		if got := F16ToF32(c.h); got != c.f {
			t.Errorf("F16ToF32(%#04x) = %v, want %v", c.h, got, c.f)
		}
		if got := F32ToF16(c.f); got != c.h {
			t.Errorf("F32ToF16(%v) = %#04x, want %#04x", c.f, got, c.h)
		}
	}
	if h := F32ToF16(float32(math.Copysign(0, -1))); h != 0x8000 {
		t.Errorf("F32ToF16(-0) = %#04x, want 0x8000", h)
	}
	rounding := []struct {
		f float32
		h uint16
	}{
		{1 + 1.0/2048, 0x3c00}, // tie to even (down)
		{1 + 3.0/2048, 0x3c02}, // tie to even (up)
		{1 + 1.0/2048 + 1.0/(1<<20), 0x3c01},
		{65519, 0x7bff}, // below the overflow tie
		{65520, 0x7c00}, // the tie overflows to inf
		{1e6, 0x7c00},
		{float32(math.Ldexp(1, -25)), 0x0000}, // tie between 0 and the smallest subnormal
		{float32(math.Ldexp(1.5, -25)), 0x0001},
	}
	for _, c := range rounding {
		if got := F32ToF16(c.f); got != c.h {
			t.Errorf("F32ToF16(%v) = %#04x, want %#04x", c.f, got, c.h)
		}
	}
	if h := F32ToF16(float32(math.NaN())); h&0x7c00 != 0x7c00 || h&0x03ff == 0 {
		t.Errorf("F32ToF16(NaN) = %#04x, not a NaN", h)
	}
	for i := range 1 << 16 { // every non-NaN half survives a round trip
		h := uint16(i)
		if h&0x7c00 == 0x7c00 && h&0x03ff != 0 {
			if f := F16ToF32(h); !math.IsNaN(float64(f)) {
				t.Fatalf("F16ToF32(%#04x) = %v, want NaN", h, f)
			}
			continue
		}
		if back := F32ToF16(F16ToF32(h)); back != h {
			t.Fatalf("f16 round trip %#04x -> %#04x", h, back)
		}
	}
}

func TestDTypeNames(t *testing.T) {
	for _, d := range []DType{F32, F16, BF16, U32, I32, U8, I64, F64, I8, U16, I16, U64, Bool} {
		p, err := Parse(d.String())
		if err != nil || p != d {
			t.Errorf("Parse(%q) = %v, %v; want %v", d.String(), p, err, d)
		}
		if d.Size() == 0 {
			t.Errorf("%v has size 0", d)
		}
	}
	if _, err := Parse("F8_E4M3"); err == nil {
		t.Error("Parse(F8_E4M3): no error")
	}
	if BF16.Size() != 2 || F32.Size() != 4 || !BF16.IsFloat() || U32.IsFloat() {
		t.Error("sizes or IsFloat wrong")
	}
}
