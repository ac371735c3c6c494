package loader

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/nlpodyssey/safetensors"
)

// Tensor is one tensor of a checkpoint: a view into a mapped file.
type Tensor struct {
	Name  string
	DType dtype.DType
	Shape []int
	// File indexes Model.Files; Offset is the byte offset of the data from
	// the start of that file (and so of its page-aligned mapping).
	File   int
	Offset int64
	// Data is the tensor's bytes inside the mapping (no copy).
	Data []byte
}

// Numel returns the number of elements.
func (t *Tensor) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// maxHeader bounds the JSON header of a safetensors file (the format's own limit).
const maxHeader = 100_000_000

// parseSafetensors reads the header of a whole safetensors file held in data
// and returns its tensors as views into data. The header is parsed with
// github.com/nlpodyssey/safetensors after checks that give precise errors.
func parseSafetensors(name string, data []byte, file int) (map[string]*Tensor, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("%s: file of %d bytes is shorter than the 8-byte header length", name, len(data))
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > maxHeader {
		return nil, fmt.Errorf("%s: header length %d exceeds the %d-byte limit", name, n, maxHeader)
	}
	if n > uint64(len(data))-8 {
		return nil, fmt.Errorf("%s: header length %d runs past the end of the %d-byte file", name, n, len(data))
	}
	header := data[8 : 8+n]
	// Our own pass over the entries gives errors that name the tensor.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return nil, fmt.Errorf("%s: header is not a JSON object: %w", name, err)
	}
	type entry struct {
		DType   string   `json:"dtype"`
		Shape   []int64  `json:"shape"`
		Offsets []uint64 `json:"data_offsets"`
	}
	type span struct {
		name       string
		start, end uint64
	}
	body := uint64(len(data)) - 8 - n
	var spans []span
	for tn, msg := range raw {
		if tn == "__metadata__" {
			continue
		}
		var e entry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: bad header entry: %w", name, tn, err)
		}
		if len(e.Offsets) != 2 {
			return nil, fmt.Errorf("%s: tensor %q: data_offsets must have 2 values, has %d", name, tn, len(e.Offsets))
		}
		dt, err := dtype.Parse(e.DType)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %w", name, tn, err)
		}
		numel := uint64(1)
		for _, d := range e.Shape {
			if d < 0 || d > 1<<40 {
				return nil, fmt.Errorf("%s: tensor %q: bad dimension %d in shape %v", name, tn, d, e.Shape)
			}
			if d > 0 && numel > (1<<48)/uint64(d) { // checked before multiplying: no wrap-around
				return nil, fmt.Errorf("%s: tensor %q: shape %v is too large", name, tn, e.Shape)
			}
			numel *= uint64(d)
		}
		start, end := e.Offsets[0], e.Offsets[1]
		if end < start || end > body {
			return nil, fmt.Errorf("%s: tensor %q: data offsets [%d, %d) are outside the %d data bytes (file shorter than its header says?)", name, tn, start, end, body)
		}
		if want := numel * uint64(dt.Size()); end-start != want {
			return nil, fmt.Errorf("%s: tensor %q: %s%v needs %d bytes but its offsets span %d", name, tn, dt, e.Shape, want, end-start)
		}
		spans = append(spans, span{tn, start, end})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].start != spans[j].start {
			return spans[i].start < spans[j].start
		}
		return spans[i].end < spans[j].end
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return nil, fmt.Errorf("%s: tensors %q and %q overlap", name, spans[i-1].name, spans[i].name)
		}
	}
	// The format wants the data contiguous and exactly filling the file.
	var covered uint64
	for _, s := range spans {
		if s.start != covered {
			return nil, fmt.Errorf("%s: data bytes [%d, %d) before tensor %q belong to no tensor (the data must be contiguous)", name, covered, s.start, s.name)
		}
		covered = s.end
	}
	if covered != body {
		return nil, fmt.Errorf("%s: %d bytes after the last tensor's data (file longer than its header says?)", name, body-covered)
	}
	// The library checks the rest and names dtypes.
	_, meta, err := safetensors.ReadMetadata(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	out := make(map[string]*Tensor, len(spans))
	base := int64(8 + n)
	for tn, info := range meta.Tensors() {
		dt, err := dtype.Parse(info.DType.String())
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %w", name, tn, err)
		}
		shape := make([]int, len(info.Shape))
		for i, d := range info.Shape {
			shape[i] = int(d)
		}
		off := base + int64(info.DataOffsets[0])
		end := base + int64(info.DataOffsets[1])
		out[tn] = &Tensor{Name: tn, DType: dt, Shape: shape, File: file, Offset: off, Data: data[off:end:end]}
	}
	return out, nil
}
