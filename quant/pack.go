package quant

import "fmt"

// PackedWords is the number of uint32 words one row of cols levels at bits
// bits takes: cols·bits/32 (cols·bits must be a multiple of 32).
func PackedWords(cols, bits int) int { return cols * bits / 32 }

func checkBits(bits int) error {
	switch bits {
	case 2, 3, 4, 5, 6, 8:
		return nil
	}
	return fmt.Errorf("quant: %d bits is not supported (want 2, 3, 4, 5, 6 or 8)", bits)
}

// Pack packs levels q (each below 2^bits) into one little-endian bit stream:
// q[i] occupies stream bits [i·bits, (i+1)·bits), and stream bit n is bit
// n%32 of word n/32. len(q)·bits must be a multiple of 32. Packing a whole
// matrix at once equals packing it row by row when every row fills whole
// words, as MLX's rows do.
func Pack(q []uint8, bits int) ([]uint32, error) {
	if err := checkBits(bits); err != nil {
		return nil, err
	}
	if len(q)*bits%32 != 0 {
		return nil, fmt.Errorf("quant: %d levels of %d bits do not fill whole 32-bit words", len(q), bits)
	}
	limit := uint8(1<<bits - 1)
	for i, v := range q {
		if v > limit {
			return nil, fmt.Errorf("quant: level %d at index %d does not fit in %d bits", v, i, bits)
		}
	}
	out := make([]uint32, len(q)*bits/32)
	packRow(out, q, bits)
	return out, nil
}

// Unpack returns the first n levels of a stream packed by Pack.
func Unpack(packed []uint32, bits, n int) ([]uint8, error) {
	if err := checkBits(bits); err != nil {
		return nil, err
	}
	if n < 0 || n*bits > len(packed)*32 {
		return nil, fmt.Errorf("quant: %d levels of %d bits need %d bits, have %d words", n, bits, n*bits, len(packed))
	}
	out := make([]uint8, n)
	unpackRow(out, packed, bits)
	return out, nil
}

// packRow writes q into dst as one bit stream (q already checked).
func packRow(dst []uint32, q []uint8, bits int) {
	var acc uint64
	var nacc uint
	out := 0
	for _, v := range q {
		acc |= uint64(v) << nacc
		nacc += uint(bits)
		if nacc >= 32 {
			dst[out] = uint32(acc)
			out++
			acc >>= 32
			nacc -= 32
		}
	}
	if nacc > 0 {
		dst[out] = uint32(acc)
	}
}

// unpackRow reads len(dst) levels from the stream src.
func unpackRow(dst []uint8, src []uint32, bits int) {
	mask := uint32(1)<<bits - 1
	for i := range dst {
		pos := i * bits
		w, off := pos>>5, uint(pos&31)
		v := src[w] >> off
		if off+uint(bits) > 32 {
			v |= src[w+1] << (32 - off)
		}
		dst[i] = uint8(v & mask)
	}
}
