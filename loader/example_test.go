package loader_test

import (
	"fmt"
	"log"

	"github.com/gemmoe/gemmoe/loader"
)

// ExampleOpen opens the 4-bit MLX fixture and prints a few facts of its
// summary: the layout, the layer mix, the experts and how each kind of
// weight is stored.
func ExampleOpen() {
	m, err := loader.Open("../testdata/tiny-moe-4bit")
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	s := m.Summarize()
	fmt.Println("layout:", s.Layout)
	fmt.Printf("layers: %d (%d sliding, %d full)\n", s.Layers, s.LayersByType["sliding_attention"], s.LayersByType["full_attention"])
	fmt.Printf("experts: %d, top-%d, width %d\n", s.Experts, s.TopK, s.ExpertWidth)
	fmt.Println("experts stored as:", s.Quantization["experts"])
	fmt.Println("router stored as:", s.Quantization["router"])
	fmt.Println("eos ids:", s.EOSTokenIDs)
	fmt.Println("softcap:", s.Softcap)
	full := m.Config.Layers[5]
	fmt.Printf("layer 5: %s, head dim %d, %d KV head, K=V %v\n", full.Type, full.HeadDim, full.KVHeads, full.KEqV)
	// Output:
	// layout: mlx
	// layers: 6 (5 sliding, 1 full)
	// experts: 16, top-4, width 64
	// experts stored as: 4-bit g64
	// router stored as: 8-bit g64
	// eos ids: [1 106]
	// softcap: 30
	// layer 5: full_attention, head dim 64, 1 KV head, K=V true
}
