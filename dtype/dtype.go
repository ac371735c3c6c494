// Package dtype names the element types that gemmoe tensors use and converts
// between them: bfloat16 by bit operations with round-to-nearest-even, float16
// through github.com/x448/float16.
package dtype

import (
	"fmt"
	"math"

	"github.com/x448/float16"
)

// DType is the element type of a tensor.
type DType uint8

// The element types. U32 holds MLX packed quantized weights.
const (
	Invalid DType = iota
	F32
	F16
	BF16
	U32
	I32
	U8
	I64
	F64
	I8
	U16
	I16
	U64
	Bool
)

var names = [...]string{
	Invalid: "invalid", F32: "F32", F16: "F16", BF16: "BF16", U32: "U32", I32: "I32",
	U8: "U8", I64: "I64", F64: "F64", I8: "I8", U16: "U16", I16: "I16", U64: "U64", Bool: "BOOL",
}

var sizes = [...]int{
	Invalid: 0, F32: 4, F16: 2, BF16: 2, U32: 4, I32: 4, U8: 1, I64: 8, F64: 8, I8: 1,
	U16: 2, I16: 2, U64: 8, Bool: 1,
}

// String returns the safetensors name of the type ("F32", "BF16", ...).
func (d DType) String() string {
	if int(d) < len(names) {
		return names[d]
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size returns the size of one element in bytes (0 for Invalid).
func (d DType) Size() int {
	if int(d) < len(sizes) {
		return sizes[d]
	}
	return 0
}

// IsFloat reports whether d is one of the float types a dense weight or an
// activation may have (F32, F16, BF16).
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 }

// Parse returns the DType for a safetensors dtype name such as "BF16".
func Parse(name string) (DType, error) {
	for i, n := range names {
		if i != int(Invalid) && n == name {
			return DType(i), nil
		}
	}
	return Invalid, fmt.Errorf("dtype: unknown safetensors dtype %q", name)
}

// BF16ToF32 widens a bfloat16 bit pattern to float32 (exact).
func BF16ToF32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// F32ToBF16 rounds a float32 to the nearest bfloat16, ties to even. NaN stays
// NaN (quiet, sign kept); infinities stay infinite; values past the largest
// finite bfloat16 round to infinity as IEEE rounding prescribes.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN: keep sign and top payload, force quiet bit
		return uint16(u>>16) | 0x0040
	}
	rounding := uint32(0x7fff) + (u>>16)&1
	return uint16((u + rounding) >> 16)
}

// F16ToF32 widens an IEEE half-precision bit pattern to float32 (exact).
func F16ToF32(h uint16) float32 { return float16.Frombits(h).Float32() }

// F32ToF16 rounds a float32 to the nearest IEEE half, ties to even.
func F32ToF16(f float32) uint16 { return float16.Fromfloat32(f).Bits() }
