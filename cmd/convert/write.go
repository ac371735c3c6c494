package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/gemmoe/gemmoe/dtype"
)

// The parts of an item an output tensor holds.
const (
	partData = iota
	partScales
	partBiases
)

// outTensor is one tensor of the output files.
type outTensor struct {
	name  string
	dt    dtype.DType
	shape []int
	item  *item
	part  int

	shard  int   // index into the shard list
	offset int64 // absolute byte offset in the shard file
}

func (t *outTensor) size() int64 {
	n := int64(t.dt.Size())
	for _, d := range t.shape {
		n *= int64(d)
	}
	return n
}

// shard is one output safetensors file.
type shard struct {
	name    string
	tensors []*outTensor
	header  []byte // length prefix + JSON header, padded to 8 bytes
	size    int64  // whole file
	f       *os.File
}

// layoutShards orders the tensors (4-byte types first, then by name, so every
// tensor starts at a multiple of its element size), cuts them into shards of
// at most maxSize bytes of data (a tensor larger than that gets a shard of its
// own), and computes each file's header and each tensor's offset.
func layoutShards(ts []*outTensor, maxSize int64) ([]*shard, error) {
	sort.Slice(ts, func(i, j int) bool {
		if a, b := ts[i].dt.Size(), ts[j].dt.Size(); a != b {
			return a > b
		}
		return ts[i].name < ts[j].name
	})
	var shards []*shard
	var cur *shard
	var used int64
	for _, t := range ts {
		if cur == nil || (used > 0 && used+t.size() > maxSize) {
			cur = &shard{}
			shards = append(shards, cur)
			used = 0
		}
		cur.tensors = append(cur.tensors, t)
		used += t.size()
	}
	if len(shards) == 0 {
		return nil, fmt.Errorf("nothing to write")
	}
	for i, s := range shards {
		s.name = "model.safetensors"
		if len(shards) > 1 {
			s.name = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		}
		type entry struct {
			DType   string   `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		header := map[string]any{"__metadata__": map[string]string{"format": "mlx"}}
		var off int64
		for _, t := range s.tensors {
			header[t.name] = entry{t.dt.String(), append([]int{}, t.shape...), [2]int64{off, off + t.size()}}
			off += t.size()
		}
		js, err := json.Marshal(header)
		if err != nil {
			return nil, err
		}
		for len(js)%8 != 0 {
			js = append(js, ' ')
		}
		s.header = make([]byte, 8, 8+len(js))
		putU64(s.header, uint64(len(js)))
		s.header = append(s.header, js...)
		base := int64(len(s.header))
		off = 0
		for _, t := range s.tensors {
			t.shard, t.offset = i, base+off
			off += t.size()
		}
		s.size = base + off
	}
	return shards, nil
}

func putU64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// createShards makes the shard files: header written, size set.
func createShards(dir string, shards []*shard) error {
	for _, s := range shards {
		f, err := os.Create(filepath.Join(dir, s.name))
		if err != nil {
			return err
		}
		s.f = f
		if _, err := f.Write(s.header); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := f.Truncate(s.size); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// closeShards syncs and closes the files; the first error wins.
func closeShards(shards []*shard, sync bool) error {
	var first error
	for _, s := range shards {
		if s.f == nil {
			continue
		}
		if sync {
			if err := s.f.Sync(); err != nil && first == nil {
				first = fmt.Errorf("%s: %w", s.name, err)
			}
		}
		if err := s.f.Close(); err != nil && first == nil {
			first = fmt.Errorf("%s: %w", s.name, err)
		}
		s.f = nil
	}
	return first
}

// writeIndex writes model.safetensors.index.json for a sharded checkpoint.
func writeIndex(dir string, shards []*shard) error {
	var total int64
	weightMap := map[string]string{}
	for _, s := range shards {
		for _, t := range s.tensors {
			weightMap[t.name] = s.name
			total += t.size()
		}
	}
	return writeJSON(filepath.Join(dir, "model.safetensors.index.json"), map[string]any{
		"metadata":   map[string]any{"total_size": total},
		"weight_map": weightMap,
	})
}

// writeJSON writes v indented by two spaces, keys sorted, without HTML escapes.
func writeJSON(path string, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
