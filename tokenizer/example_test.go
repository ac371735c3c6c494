package tokenizer_test

import (
	"fmt"
	"log"

	"github.com/gemmoe/gemmoe/tokenizer"
)

func ExampleLoad() {
	tok, err := tokenizer.Load("../testdata/tokenizer/gemma3-tokenizer.json.gz")
	if err != nil {
		log.Fatal(err)
	}
	bos, _ := tok.BOS()
	fmt.Println(tok.VocabSize(), bos, tok.Piece(bos))
	// Output: 262145 2 <bos>
}

func ExampleTokenizer_Encode() {
	tok, err := tokenizer.Load("../testdata/tokenizer/gemma3-tokenizer.json.gz")
	if err != nil {
		log.Fatal(err)
	}
	ids := tok.Encode("Hello, world!", true)
	fmt.Println(ids)
	for _, id := range ids {
		fmt.Printf("%q ", tok.Piece(id))
	}
	fmt.Println()
	// Output:
	// [2 9259 236764 1902 236888]
	// "<bos>" "Hello" "," "▁world" "!"
}

func ExampleTokenizer_Decode() {
	tok, err := tokenizer.Load("../testdata/tokenizer/gemma3-tokenizer.json.gz")
	if err != nil {
		log.Fatal(err)
	}
	ids := tok.Encode("<start_of_turn>user\nHi<end_of_turn>", true)
	fmt.Printf("%q\n", tok.Decode(ids, false))
	fmt.Printf("%q\n", tok.Decode(ids, true))
	// Output:
	// "<bos><start_of_turn>user\nHi<end_of_turn>"
	// "user\nHi"
}

func ExampleStreamDecoder() {
	tok, err := tokenizer.Load("../testdata/tokenizer/gemma3-tokenizer.json.gz")
	if err != nil {
		log.Fatal(err)
	}
	// Generated tokens arrive one by one; characters missing from the
	// vocabulary arrive as several byte pieces (<0xNN>).
	ids := tok.Encode("𝔘 is U+1D518", false)
	d := tok.NewStreamDecoder(true)
	for _, id := range ids {
		fmt.Printf("%-8s -> %q\n", tok.Piece(id), d.Add(id))
	}
	fmt.Printf("Flush    -> %q\n", d.Flush())
	// Output:
	// <0xF0>   -> ""
	// <0x9D>   -> ""
	// <0x94>   -> ""
	// <0x98>   -> "𝔘"
	// ▁is      -> " is"
	// ▁U       -> " U"
	// +        -> "+"
	// 1        -> "1"
	// D        -> "D"
	// 5        -> "5"
	// 1        -> "1"
	// 8        -> "8"
	// Flush    -> ""
}
