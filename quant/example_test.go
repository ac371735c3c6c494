package quant_test

import (
	"fmt"
	"log"

	"github.com/gemmoe/gemmoe/quant"
)

// Example quantizes one row of 32 weights to 4 bits in a single group and
// dequantizes it. The larger-magnitude end (-1) is kept exactly as the bias;
// every other weight comes back within half a step.
func Example() {
	w := make([]float32, 32)
	for i := range w {
		w[i] = -1 + 1.6*float32(i)/31 // -1 ... 0.6
	}
	packed, scales, biases, err := quant.Quantize(w, 1, 32, 4, 32)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d words, scale %.6g, bias %g\n", len(packed), scales[0], biases[0])
	fmt.Printf("first word %#08x\n", packed[0])
	deq, err := quant.Dequantize(packed, scales, biases, 1, 32, 4, 32)
	if err != nil {
		log.Fatal(err)
	}
	var worst float32
	for i := range w {
		worst = max(worst, max(deq[i]-w[i], w[i]-deq[i]))
	}
	fmt.Printf("w[0] -> %g, w[31] = %.4g -> %.4g; worst error %.2f steps\n", deq[0], w[31], deq[31], worst/scales[0])
	// Output:
	// 4 words, scale 0.111328, bias -1
	// first word 0x33221100
	// w[0] -> -1, w[31] = 0.6 -> 0.5586; worst error 0.49 steps
}
