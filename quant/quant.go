// Package quant implements MLX's affine quantization ("mode": "affine") in
// pure Go: the per-group scale and bias rules of mlx.core.quantize, the
// packing of a row's levels into one little-endian bit stream of uint32
// words, and dequantization.
//
// A weight [rows, cols] is cut into groups of Group consecutive elements of a
// row. For each group, in float32 (mlx/backend/cpu/quantized.cpp, and the same
// rules in mlx/ops.cpp and the Metal kernel):
//
//	n     = 2^bits - 1
//	scale = max((max - min) / n, 1e-7)
//	side  = |min| > |max|             // the end with the larger magnitude
//	scale = side ? scale : -scale     // so scales can be negative
//	edge  = side ? min : max
//	q0    = round(edge / scale)
//	if q0 != 0 { scale = edge / q0; bias = edge } else { bias = 0 }
//	q     = clip(round((w - bias) / scale), 0, n)
//
// so the larger-magnitude end is exact in float32 and 0 is exactly
// representable. The scale and bias are stored in the weight's type (bf16 for
// Gemma checkpoints, rounded to nearest even) and a runtime reconstructs
// w ≈ scale·q + bias from the stored values. See Rounding for which scale and
// bias q is computed from.
//
// Packing: element i of a row occupies bits [i·bits, (i+1)·bits) of the row's
// stream, and stream bit n is bit n%32 of word n/32, so for 2, 4 and 8 bits
// element 0 sits in the lowest bits of word 0, and 3-, 5- and 6-bit levels
// straddle words. A row of cols elements takes cols·bits/32 words.
package quant

import (
	"errors"
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
)

// Rounding selects how each weight's level q is rounded once its group's
// scale and bias are known. The scale and bias are the same in every mode
// (except MLXMetal's max rule); only a few levels move by one step.
type Rounding uint8

const (
	// Stored computes q from the scale and bias as they are stored (rounded
	// to the storage type), rounding ties to even. Every level is then the
	// nearest one under the dequantization a runtime performs, and the
	// project's fixtures (testdata/tiny-moe-{4bit,8bit,mixed}) are
	// reproduced bit for bit. The default.
	Stored Rounding = iota
	// MLX is mx.quantize on the CPU (mlx/backend/cpu/quantized.cpp and the
	// fallback in mlx/ops.cpp): q from the float32 scale and bias before they
	// are cast to the storage type, ties to even. Output identical to MLX's
	// CPU quantizer.
	MLX
	// MLXMetal is mx.quantize on a Mac GPU (affine_quantize in
	// mlx/backend/metal/kernels/quantized.h): the running max starts at 0
	// (so an all-negative group spans up to 0), q from the float32 scale and
	// bias, ties away from zero (Metal's round).
	MLXMetal
)

// String names the rounding as the -rounding flag of cmd/convert spells it.
func (r Rounding) String() string {
	switch r {
	case Stored:
		return "stored"
	case MLX:
		return "mlx"
	case MLXMetal:
		return "mlx-metal"
	}
	return fmt.Sprintf("Rounding(%d)", uint8(r))
}

// ParseRounding returns the Rounding named s ("stored", "mlx", "mlx-metal").
func ParseRounding(s string) (Rounding, error) {
	for r := Stored; r <= MLXMetal; r++ {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("quant: unknown rounding %q (want stored, mlx or mlx-metal)", s)
}

// Params describes one affine quantization.
type Params struct {
	Bits  int // bits per weight: 2, 3, 4, 5, 6 or 8
	Group int // elements per scale/bias: 32, 64 or 128
	// Type is the type the scales and biases are stored in: BF16 (also
	// meant by the zero value), F16 or F32. MLX stores them in the weight's
	// type.
	Type     dtype.DType
	Rounding Rounding
}

// eps is MLX's smallest scale magnitude (a float constant 1e-7 in C++).
const eps = float32(1e-7)

// storage returns p.Type with the zero value read as BF16.
func (p Params) storage() dtype.DType {
	if p.Type == dtype.Invalid {
		return dtype.BF16
	}
	return p.Type
}

// Check reports whether p is a quantization MLX supports.
func (p Params) Check() error {
	switch p.Bits {
	case 2, 3, 4, 5, 6, 8:
	default:
		return fmt.Errorf("quant: %d bits is not supported (want 2, 3, 4, 5, 6 or 8)", p.Bits)
	}
	switch p.Group {
	case 32, 64, 128:
	default:
		return fmt.Errorf("quant: group size %d is not supported (want 32, 64 or 128)", p.Group)
	}
	switch p.storage() {
	case dtype.BF16, dtype.F16, dtype.F32:
	default:
		return fmt.Errorf("quant: scales cannot be stored as %s (want BF16, F16 or F32)", p.Type)
	}
	if p.Rounding > MLXMetal {
		return fmt.Errorf("quant: unknown rounding %d", p.Rounding)
	}
	return nil
}

// CheckShape reports whether a [rows, cols] weight can be quantized with p:
// cols must be a multiple of the group size (and so the rows fill whole words).
func (p Params) CheckShape(rows, cols int) error {
	if err := p.Check(); err != nil {
		return err
	}
	if rows < 0 || cols <= 0 {
		return fmt.Errorf("quant: bad shape [%d, %d]", rows, cols)
	}
	if cols%p.Group != 0 {
		return fmt.Errorf("quant: row width %d is not a multiple of the group size %d", cols, p.Group)
	}
	return nil
}

// Quantize quantizes the row-major weight w [rows, cols] with MLX's affine
// algorithm at bits and group size group, the scales and biases rounded to
// bfloat16 and the levels rounded as Stored. packed has rows·cols·bits/32
// words; scales and biases have rows·cols/group values, each exactly a bf16
// value (convert with dtype.F32ToBF16 to store them).
func Quantize(w []float32, rows, cols, bits, group int) (packed []uint32, scales, biases []float32, err error) {
	p := Params{Bits: bits, Group: group}
	if err := p.CheckShape(rows, cols); err != nil {
		return nil, nil, nil, err
	}
	packed = make([]uint32, rows*PackedWords(cols, bits))
	scales = make([]float32, rows*cols/group)
	biases = make([]float32, len(scales))
	if err := p.QuantizeInto(packed, scales, biases, w, rows, cols); err != nil {
		return nil, nil, nil, err
	}
	return packed, scales, biases, nil
}

// QuantizeInto quantizes w [rows, cols] with p into caller buffers: packed
// needs rows·cols·Bits/32 words, scales and biases rows·cols/Group values
// (exactly representable in p.Type). Non-finite weights are an error that
// names the row.
func (p Params) QuantizeInto(packed []uint32, scales, biases, w []float32, rows, cols int) error {
	if err := p.CheckShape(rows, cols); err != nil {
		return err
	}
	words, groups := PackedWords(cols, p.Bits), cols/p.Group
	switch {
	case len(w) != rows*cols:
		return fmt.Errorf("quant: %d weights for a [%d, %d] matrix", len(w), rows, cols)
	case len(packed) < rows*words:
		return fmt.Errorf("quant: packed buffer of %d words, need %d", len(packed), rows*words)
	case len(scales) < rows*groups || len(biases) < rows*groups:
		return fmt.Errorf("quant: scales/biases buffers of %d/%d values, need %d", len(scales), len(biases), rows*groups)
	}
	for r := range rows {
		if err := p.quantizeRow(packed[r*words:(r+1)*words], scales[r*groups:(r+1)*groups],
			biases[r*groups:(r+1)*groups], w[r*cols:(r+1)*cols]); err != nil {
			return fmt.Errorf("quant: row %d: %w", r, err)
		}
	}
	return nil
}

var errNonFinite = errors.New("weight is NaN or infinite")

// quantizeRow quantizes one row (len(w) a multiple of p.Group) into its
// packed words, scales and biases.
func (p Params) quantizeRow(dst []uint32, scales, biases, w []float32) error {
	st := p.storage()
	nbins := float32(int(1)<<p.Bits - 1)
	round, level := roundEven, levelEven
	if p.Rounding == MLXMetal {
		round, level = roundAway, levelAway
	}
	bits := uint(p.Bits)
	var acc uint64 // pending stream bits, lowest first
	var nacc uint  // how many
	out := 0
	for g := range len(w) / p.Group {
		grp := w[g*p.Group : (g+1)*p.Group]
		wmin, wmax := float32(math.Inf(1)), float32(math.Inf(-1))
		if p.Rounding == MLXMetal {
			wmax = 0 // the Metal kernel starts its running max at 0
		}
		var finite float32 // stays 0 unless a weight is NaN or ±Inf
		for _, v := range grp {
			finite += v * 0
			if v < wmin {
				wmin = v
			}
			if v > wmax {
				wmax = v
			}
		}
		if finite != 0 {
			return fmt.Errorf("group %d: %w", g, errNonFinite)
		}
		scale := max((wmax-wmin)/nbins, eps)
		side := abs32(wmin) > abs32(wmax)
		edge := wmax
		if side {
			edge = wmin
		} else {
			scale = -scale
		}
		bias := float32(0)
		if q0 := round(edge / scale); q0 != 0 {
			scale, bias = edge/q0, edge
		}
		ss, sb := roundTo(scale, st), roundTo(bias, st)
		scales[g], biases[g] = ss, sb
		if p.Rounding == Stored && ss != 0 { // ss is never 0 but for f16 underflow
			scale, bias = ss, sb
		}
		for _, v := range grp {
			// clip(round(x), 0, n): at or past an end the clip decides,
			// in between (NaN included, as 0) the rounding.
			x := (v - bias) / scale
			var q uint64
			if x >= nbins {
				q = uint64(nbins)
			} else if x > 0 {
				q = level(x)
			}
			acc |= q << nacc
			nacc += bits
			if nacc >= 32 {
				dst[out] = uint32(acc)
				out++
				acc >>= 32
				nacc -= 32
			}
		}
	}
	return nil
}

// Dequantize reconstructs the weight [rows, cols] from packed levels and the
// stored scales and biases (as float32): w = scale·q + bias, in float32.
func Dequantize(packed []uint32, scales, biases []float32, rows, cols, bits, group int) ([]float32, error) {
	p := Params{Bits: bits, Group: group}
	if err := p.CheckShape(rows, cols); err != nil {
		return nil, err
	}
	words, groups := PackedWords(cols, bits), cols/group
	if len(packed) != rows*words {
		return nil, fmt.Errorf("quant: %d packed words for [%d, %d] at %d bits, need %d", len(packed), rows, cols, bits, rows*words)
	}
	if len(scales) != rows*groups || len(biases) != rows*groups {
		return nil, fmt.Errorf("quant: %d scales and %d biases for [%d, %d] in groups of %d, need %d", len(scales), len(biases), rows, cols, group, rows*groups)
	}
	out := make([]float32, rows*cols)
	q := make([]uint8, cols)
	for r := range rows {
		unpackRow(q, packed[r*words:(r+1)*words], bits)
		for i, v := range q {
			g := r*groups + i/group
			// The conversion keeps the product rounded on its own (no FMA).
			out[r*cols+i] = float32(scales[g]*float32(v)) + biases[g]
		}
	}
	return out, nil
}

// roundTo rounds x to the nearest value of type t (ties to even), as MLX's
// astype does, and returns it as a float32.
func roundTo(x float32, t dtype.DType) float32 {
	switch t {
	case dtype.BF16:
		return dtype.BF16ToF32(dtype.F32ToBF16(x))
	case dtype.F16:
		return dtype.F16ToF32(dtype.F32ToF16(x))
	}
	return x
}

// roundEven is std::rint in the default rounding mode: ties to even.
func roundEven(x float32) float32 { return float32(math.RoundToEven(float64(x))) }

// roundAway is Metal's round: ties away from zero.
func roundAway(x float32) float32 { return float32(math.Round(float64(x))) }

// levelEven is uint(roundEven(x)) for 0 < x < 2^31, without a call: adding
// and subtracting 1.5·2^52 in float64 leaves x rounded to an integer, ties
// to even (x, a float32, is exact in float64).
func levelEven(x float32) uint64 {
	const magic = 0x1.8p52
	return uint64((float64(x) + magic) - magic)
}

// levelAway is uint(roundAway(x)) for 0 < x < 2^31: x + 0.5 is exact in
// float64, and truncation is floor for positive values.
func levelAway(x float32) uint64 { return uint64(float64(x) + 0.5) }

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
