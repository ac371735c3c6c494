package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// testdata is the project's fixture folder, relative to this package.
const testdata = "../testdata"

// fixtures are the model folders every structural test runs over.
var fixtures = []string{"tiny-moe", "tiny-moe-4bit", "tiny-moe-8bit", "tiny-moe-mixed"}

func fixtureDir(name string) string { return filepath.Join(testdata, name) }

// stEntry is one tensor entry of a safetensors header.
type stEntry struct {
	DType   string    `json:"dtype"`
	Shape   []int     `json:"shape"`
	Offsets [2]uint64 `json:"data_offsets"`
}

// stFile is a safetensors file held in memory for a test to edit: the header
// entries keep their raw offsets into Body, so a test can also corrupt those.
type stFile struct {
	Meta    map[string]string
	Entries map[string]*stEntry
	Body    []byte
}

// fileCache holds fixture bytes read once per test binary (read-only).
var fileCache sync.Map

func readCached(t testing.TB, path string) []byte {
	t.Helper()
	if b, ok := fileCache.Load(path); ok {
		return b.([]byte)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fileCache.Store(path, b)
	return b
}

// decodeST parses a well-formed safetensors file (test side, independent of
// the loader's parser).
func decodeST(t testing.TB, b []byte) *stFile {
	t.Helper()
	n := binary.LittleEndian.Uint64(b[:8])
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &raw); err != nil {
		t.Fatal(err)
	}
	s := &stFile{Entries: map[string]*stEntry{}, Body: append([]byte(nil), b[8+n:]...)}
	for k, v := range raw {
		if k == "__metadata__" {
			if err := json.Unmarshal(v, &s.Meta); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var e stEntry
		if err := json.Unmarshal(v, &e); err != nil {
			t.Fatal(err)
		}
		s.Entries[k] = &e
	}
	return s
}

// readST reads the safetensors file of a fixture folder.
func readST(t testing.TB, fixture string) *stFile {
	t.Helper()
	return decodeST(t, readCached(t, filepath.Join(fixtureDir(fixture), "model.safetensors")))
}

// Encode writes the file: 8-byte length, header JSON padded with spaces to a
// multiple of 8, body.
func (s *stFile) Encode() []byte {
	hdr := map[string]any{}
	for k, e := range s.Entries {
		hdr[k] = e
	}
	if s.Meta != nil {
		hdr["__metadata__"] = s.Meta
	}
	h, err := json.Marshal(hdr)
	if err != nil {
		panic(err)
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, s.Body...)
}

// Data returns the bytes of the named tensor.
func (s *stFile) Data(name string) []byte {
	e := s.Entries[name]
	return s.Body[e.Offsets[0]:e.Offsets[1]]
}

// Names returns the tensor names, sorted.
func (s *stFile) Names() []string {
	var out []string
	for k := range s.Entries {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Put adds or replaces a tensor, keeping the body contiguous.
func (s *stFile) Put(name, dt string, shape []int, data []byte) {
	if _, ok := s.Entries[name]; ok {
		delete(s.Entries, name)
		s.compact()
	}
	start := uint64(len(s.Body))
	s.Body = append(s.Body, data...)
	s.Entries[name] = &stEntry{DType: dt, Shape: shape, Offsets: [2]uint64{start, uint64(len(s.Body))}}
}

// Delete removes a tensor, keeping the body contiguous.
func (s *stFile) Delete(name string) {
	delete(s.Entries, name)
	s.compact()
}

// Rename moves a tensor to a new name.
func (s *stFile) Rename(from, to string) {
	s.Entries[to] = s.Entries[from]
	delete(s.Entries, from)
}

// Subset returns a new file with only the named tensors.
func (s *stFile) Subset(names []string) *stFile {
	out := &stFile{Meta: s.Meta, Entries: map[string]*stEntry{}}
	for _, n := range names {
		e := s.Entries[n]
		start := uint64(len(out.Body))
		out.Body = append(out.Body, s.Data(n)...)
		out.Entries[n] = &stEntry{DType: e.DType, Shape: e.Shape, Offsets: [2]uint64{start, uint64(len(out.Body))}}
	}
	return out
}

// compact rebuilds the body in offset order without holes.
func (s *stFile) compact() {
	names := s.Names()
	sort.SliceStable(names, func(i, j int) bool {
		return s.Entries[names[i]].Offsets[0] < s.Entries[names[j]].Offsets[0]
	})
	var body []byte
	for _, n := range names {
		e := s.Entries[n]
		d := s.Body[e.Offsets[0]:e.Offsets[1]]
		start := uint64(len(body))
		body = append(body, d...)
		e.Offsets = [2]uint64{start, uint64(len(body))}
	}
	s.Body = body
}

// modelCopy makes a model folder in a fresh temp dir from a fixture: its
// config.json, and its model.safetensors after edit (edit may be nil).
func modelCopy(t testing.TB, fixture string, edit func(*stFile)) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config.json"), readCached(t, filepath.Join(fixtureDir(fixture), "config.json")))
	if edit == nil {
		writeFile(t, filepath.Join(dir, "model.safetensors"), readCached(t, filepath.Join(fixtureDir(fixture), "model.safetensors")))
		return dir
	}
	s := readST(t, fixture)
	edit(s)
	writeFile(t, filepath.Join(dir, "model.safetensors"), s.Encode())
	return dir
}

// editConfig rewrites dir/config.json through edit on its JSON object.
func editConfig(t testing.TB, dir string, edit func(cfg map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	if b, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, b)
}

// editFileBytes rewrites dir/name through edit on its raw bytes.
func editFileBytes(t testing.TB, dir, name string, edit func([]byte) []byte) {
	t.Helper()
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, edit(b))
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// quantBlocks returns the "quantization" and "quantization_config" objects
// of a config (those present).
func quantBlocks(cfg map[string]any) []map[string]any {
	var out []map[string]any
	for _, k := range []string{"quantization", "quantization_config"} {
		if q, ok := cfg[k].(map[string]any); ok {
			out = append(out, q)
		}
	}
	return out
}

// wantOpenErr opens dir and checks that it fails with an error containing every
// one of subs; it reports the error text on failure.
func wantOpenErr(t *testing.T, dir string, subs ...string) {
	t.Helper()
	m, err := Open(dir)
	if err == nil {
		m.Close()
		t.Fatalf("Open succeeded, want an error containing %q", subs)
	}
	t.Log(err)
	if m != nil {
		t.Errorf("Open returned a model along with error %v", err)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// buildST builds a small safetensors file from (name, dtype, shape) triples
// with deterministic data.
func buildST(meta map[string]string, tensors ...stTensor) []byte {
	s := &stFile{Meta: meta, Entries: map[string]*stEntry{}}
	for _, tt := range tensors {
		if tt.shape == nil {
			tt.shape = []int{}
		}
		n := 1
		for _, d := range tt.shape {
			n *= d
		}
		size := map[string]int{"F32": 4, "BF16": 2, "F16": 2, "U32": 4, "I32": 4, "U8": 1, "I64": 8}[tt.dtype]
		data := bytes.Repeat([]byte{byte(len(s.Entries) + 1)}, n*size)
		start := uint64(len(s.Body))
		s.Body = append(s.Body, data...)
		s.Entries[tt.name] = &stEntry{DType: tt.dtype, Shape: tt.shape, Offsets: [2]uint64{start, uint64(len(s.Body))}}
	}
	return s.Encode()
}

type stTensor struct {
	name  string
	dtype string
	shape []int
}
