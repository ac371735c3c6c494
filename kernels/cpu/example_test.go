package cpu_test

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
)

// ExampleBackend_MatMul multiplies a vector by a 4-bit MLX-quantized weight:
// two output rows, 32 inputs, one group of 32 per row.
func ExampleBackend_MatMul() {
	b := cpu.New()
	defer b.Close()

	// Row 0 holds the values q = i mod 16, row 1 holds q = 1 everywhere; each
	// row is a little-endian stream of 4-bit values (8 per uint32 word).
	packed := make([]byte, 2*4*4)
	for i := range 32 {
		binary.LittleEndian.PutUint32(packed[4*(i/8):], binary.LittleEndian.Uint32(packed[4*(i/8):])|uint32(i%16)<<(4*(i%8)))
		binary.LittleEndian.PutUint32(packed[16+4*(i/8):], binary.LittleEndian.Uint32(packed[16+4*(i/8):])|1<<(4*(i%8)))
	}
	f32s := func(v ...float32) []byte {
		out := make([]byte, 4*len(v))
		for i, f := range v {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(f))
		}
		return out
	}
	upload := func(dt dtype.DType, data []byte, shape ...int) kernels.Tensor {
		t, err := b.Alloc(dt, shape...)
		if err != nil {
			panic(err)
		}
		if err := b.Upload(t, data); err != nil {
			panic(err)
		}
		return t
	}
	w := &kernels.Weight{
		Data:   upload(dtype.U32, packed, 2, 4),
		Scales: upload(dtype.F32, f32s(0.5, 2), 2, 1), // w = scale·q + bias
		Biases: upload(dtype.F32, f32s(-1, 0), 2, 1),
		Bits:   4, Group: 32, N: 2, K: 32,
	}
	ones := make([]float32, 32)
	for i := range ones {
		ones[i] = 1
	}
	x := upload(dtype.F32, f32s(ones...), 1, 32)
	y, _ := b.Alloc(dtype.F32, 1, 2)
	if err := b.MatMul(y, x, w); err != nil {
		fmt.Println(err)
		return
	}
	out := make([]byte, 8)
	if err := b.Download(out, y); err != nil {
		fmt.Println(err)
		return
	}
	// Row 0: Σ(0.5·(i mod 16) − 1) = 0.5·240 − 32 = 88. Row 1: 32·2 = 64.
	fmt.Println(math.Float32frombits(binary.LittleEndian.Uint32(out)), math.Float32frombits(binary.LittleEndian.Uint32(out[4:])))
	// Output: 88 64
}
