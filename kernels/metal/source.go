package metal

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"sort"
	"strings"
	"sync"
)

// The MSL kernels (msl/*.metal, concatenated in name order) and, when one
// has been built on a Mac, a precompiled library msl/gemmoe.metallib with the
// SHA-256 of the source it was built from in msl/gemmoe.metallib.sha256.
//
//go:embed msl
var mslFS embed.FS

var (
	sourceOnce sync.Once
	source     string
)

// Source returns the MSL source of all kernels: the files of msl/
// concatenated in name order. Metal compiles it as one library; the emulator
// compiles the same text as C++.
func Source() string {
	sourceOnce.Do(func() {
		names, _ := fs.Glob(mslFS, "msl/*.metal")
		sort.Strings(names)
		var b strings.Builder
		for _, n := range names {
			data, _ := mslFS.ReadFile(n)
			b.WriteString("#line 1 \"" + n + "\"\n")
			b.Write(data)
			if len(data) > 0 && data[len(data)-1] != '\n' {
				b.WriteByte('\n')
			}
		}
		source = b.String()
	})
	return source
}

// SourceHash returns the hex SHA-256 of Source.
func SourceHash() string {
	h := sha256.Sum256([]byte(Source()))
	return hex.EncodeToString(h[:])
}

// Metallib returns the embedded precompiled library if there is one built
// from the current Source, else nil (and the source is compiled at first use).
func Metallib() []byte {
	lib, err := mslFS.ReadFile("msl/gemmoe.metallib")
	if err != nil {
		return nil
	}
	sum, err := mslFS.ReadFile("msl/gemmoe.metallib.sha256")
	if err != nil || strings.TrimSpace(string(sum)) != SourceHash() {
		return nil
	}
	return lib
}
