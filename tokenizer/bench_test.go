package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// proseText is original English prose for the encoding benchmark.
const proseText = `The harbour town woke slowly that morning. Fishermen who had gone out before dawn were already
coming back, their boats low in the water, and the gulls followed them in wide, complaining circles. On the
quay an old woman sold bread from a cart, calling out prices that had not changed in twenty years, while a boy
with a bicycle waited for the ferry that would take him to school on the other side of the bay.

Nobody in the town remembered exactly when the lighthouse had stopped working. Some said it was the winter of
the great storm, when the sea came over the wall and flooded the lower streets; others insisted it had simply
grown tired, the way old machines do, and that one evening the keeper climbed the stairs, looked at the lamp,
and decided it was not worth the trouble any more. Whatever the truth, the tower still stood at the end of the
breakwater, white paint peeling, a landmark for sailors who no longer needed it.

In the afternoons the light changed. Clouds rolled in from the west, the colour of wet slate, and the water
turned from blue to a dull green. Tourists, if there were any, retreated to the cafés along the front and
ordered coffee they did not really want, just to sit by the windows and watch the weather arrive. It was, the
locals said, the best free show on the coast: twenty minutes of wind and rain, and then the sun again, as if
nothing had happened at all.
`

// benchText repeats s to about n bytes.
func benchText(s string, n int) string {
	return strings.Repeat(s, n/len(s)+1)[:n]
}

func benchmarkEncode(b *testing.B, text string) {
	tok := gemma3(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	var n int
	for i := 0; i < b.N; i++ {
		n = len(tok.Encode(text, true))
	}
	b.ReportMetric(float64(len(text))/float64(n), "bytes/token")
}

// BenchmarkEncodeProse encodes English prose (64 KiB: the passage above,
// repeated, so the word cache mostly hits).
func BenchmarkEncodeProse(b *testing.B) {
	benchmarkEncode(b, benchText(proseText, 64<<10))
}

// BenchmarkEncodeProseNoCache is BenchmarkEncodeProse without the word
// cache: every word goes through the merge loop.
func BenchmarkEncodeProseNoCache(b *testing.B) {
	noWordCache = true
	defer func() { noWordCache = false }()
	benchmarkEncode(b, benchText(proseText, 64<<10))
}

// BenchmarkEncodeCode encodes Go source (64 KiB of this package's own
// files, without repetition).
func BenchmarkEncodeCode(b *testing.B) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		b.Fatal("no Go files", err)
	}
	var sb strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(data)
	}
	if sb.Len() < 64<<10 {
		b.Fatalf("only %d bytes of source", sb.Len())
	}
	benchmarkEncode(b, sb.String()[:64<<10])
}

// BenchmarkLoad loads the gzipped Gemma 3 tokenizer.json (5.4 MB, 33 MB
// uncompressed).
func BenchmarkLoad(b *testing.B) {
	path := filepath.Join(testdataDir, "tokenizer", "gemma3-tokenizer.json.gz")
	for i := 0; i < b.N; i++ {
		if _, err := Load(path); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeShort encodes one chat-sized message (about 60 bytes).
func BenchmarkEncodeShort(b *testing.B) {
	benchmarkEncode(b, "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n")
}

// BenchmarkDecode decodes the prose benchmark's ids.
func BenchmarkDecode(b *testing.B) {
	tok := gemma3(b)
	text := benchText(proseText, 64<<10)
	ids := tok.Encode(text, false)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Decode(ids, false)
	}
}

// BenchmarkStreamDecode feeds the prose benchmark's ids one at a time.
func BenchmarkStreamDecode(b *testing.B) {
	tok := gemma3(b)
	text := benchText(proseText, 64<<10)
	ids := tok.Encode(text, false)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := tok.NewStreamDecoder(false)
		for _, id := range ids {
			d.Add(id)
		}
		d.Flush()
	}
}
