package loader

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/gemmoe/gemmoe/dtype"
)

// rawST builds a safetensors file from a literal header and a body of n bytes.
func rawST(header string, n int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, n)...)
}

func TestParseSafetensors(t *testing.T) {
	cases := []struct {
		name string
		data []byte
		want map[string]string // tensor -> "DTYPE[shape]@offset"; nil with err
		err  []string
	}{
		{name: "no tensors", data: rawST(`{}`, 0), want: map[string]string{}},
		{name: "metadata only", data: rawST(`{"__metadata__":{"format":"mlx"}}`, 0), want: map[string]string{}},
		{name: "null header", data: rawST(`null`, 0), want: map[string]string{}},
		{name: "three tensors",
			data: buildST(map[string]string{"format": "pt"},
				stTensor{"a", "BF16", []int{2, 3}}, stTensor{"b", "U32", []int{4}}, stTensor{"c", "F32", nil}),
			want: map[string]string{"a": "BF16[2 3]@0", "b": "U32[4]@12", "c": "F32[]@28"}},
		{name: "zero-size tensor at the end",
			data: rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]}}`, 4),
			want: map[string]string{"a": "F32[1]@0", "z": "F32[0 5]@4"}},
		{name: "entries out of offset order",
			data: rawST(`{"b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}`, 8),
			want: map[string]string{"a": "I32[1]@0", "b": "I32[1]@4"}},

		{name: "7 bytes", data: []byte("1234567"), err: []string{"file of 7 bytes is shorter than the 8-byte header length"}},
		{name: "header past the end", data: rawST(`{}`, 0)[:9], err: []string{"header length 2 runs past the end of the 9-byte file"}},
		{name: "header not an object", data: rawST(`[]`, 0), err: []string{"header is not a JSON object"}},
		{name: "trailing junk after the header", data: rawST(`{} x`, 0), err: []string{"header is not a JSON object"}},
		{name: "entry not an object", data: rawST(`{"a":5}`, 0), err: []string{`tensor "a": bad header entry`}},
		{name: "one data offset", data: rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, 4), err: []string{`"a"`, "data_offsets must have 2 values, has 1"}},
		{name: "unknown dtype", data: rawST(`{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}`, 1), err: []string{`"a"`, `"F8_E4M3"`}},
		{name: "negative dimension", data: rawST(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), err: []string{`"a"`, "bad dimension -1"}},
		{name: "dimension over 2^40", data: rawST(`{"a":{"dtype":"F32","shape":[2000000000000],"data_offsets":[0,0]}}`, 0), err: []string{"bad dimension 2000000000000"}},
		{name: "shape that wraps around 2^64", data: rawST(`{"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}}`, 0),
			err: []string{`"a"`, "is too large"}},
		{name: "shape over 2^48 elements", data: rawST(`{"a":{"dtype":"U8","shape":[1048576,1048576,1048576],"data_offsets":[0,0]}}`, 0),
			err: []string{`"a"`, "is too large"}},
		{name: "fractional dimension", data: rawST(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, 4), err: []string{`"a"`, "bad header entry"}},
		{name: "offsets past the data", data: rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), err: []string{`"a"`, "outside the 4 data bytes", "shorter"}},
		{name: "size disagrees with the shape", data: rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), err: []string{`"a"`, "F32[2] needs 8 bytes but its offsets span 4"}},
		{name: "overlap", data: rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8),
			err: []string{`"a"`, `"b"`, "overlap"}},
		{name: "gap", data: rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), err: []string{"data bytes [0, 4) before tensor \"a\" belong to no tensor"}},
		{name: "trailing bytes", data: rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 6), err: []string{"2 bytes after the last tensor's data"}},
		{name: "non-string metadata", data: rawST(`{"__metadata__":{"n":1}}`, 0), err: []string{"__metadata__"}},
		{name: "extra key in an entry", data: rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4), err: []string{`"a"`}},
		{name: "key of another case", data: rawST(`{"a":{"DTYPE":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), err: []string{`"a"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts, err := parseSafetensors("x.safetensors", tc.data, 3)
			if tc.err != nil {
				if err == nil {
					t.Fatalf("no error, want %q", tc.err)
				}
				if ts != nil {
					t.Errorf("tensors returned along with %v", err)
				}
				for _, s := range append(tc.err, "x.safetensors: ") {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			base := int64(8 + binary.LittleEndian.Uint64(tc.data[:8]))
			got := map[string]string{}
			for name, tt := range ts {
				got[name] = fmt.Sprintf("%s%v@%d", tt.DType, tt.Shape, tt.Offset-base)
				if tt.File != 3 {
					t.Errorf("%s: File %d, want 3", name, tt.File)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			checkViews(t, tc.data, ts)
		})
	}
}

// checkViews checks what parseSafetensors promises of a successful parse:
// every tensor is a slice of data at its Offset, past the header, sized by
// its dtype and shape, with no spare capacity.
func checkViews(t *testing.T, data []byte, ts map[string]*Tensor) {
	t.Helper()
	start := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
	end := start + uintptr(len(data))
	for name, tt := range ts {
		if tt.Name != name {
			t.Errorf("tensor %q named %q", name, tt.Name)
		}
		if tt.DType.Size() == 0 || tt.DType == dtype.Invalid {
			t.Errorf("%q: dtype %v", name, tt.DType)
		}
		n := len(tt.Data)
		if n != tt.Numel()*tt.DType.Size() || cap(tt.Data) != n {
			t.Errorf("%q: %d bytes (cap %d) for %s%v", name, n, cap(tt.Data), tt.DType, tt.Shape)
		}
		if tt.Offset < 8 || tt.Offset+int64(n) > int64(len(data)) {
			t.Errorf("%q: offset %d + %d bytes outside the %d-byte input", name, tt.Offset, n, len(data))
			continue
		}
		if n == 0 {
			continue
		}
		p := uintptr(unsafe.Pointer(unsafe.SliceData(tt.Data)))
		if p < start || p+uintptr(n) > end {
			t.Errorf("%q: data [%#x, %#x) outside the input [%#x, %#x)", name, p, p+uintptr(n), start, end)
		} else if p != start+uintptr(tt.Offset) {
			t.Errorf("%q: data at input byte %d, Offset says %d", name, p-start, tt.Offset)
		}
	}
}

// FuzzParseSafetensors checks that the header parser never panics and that
// whatever it accepts lies inside its input.
func FuzzParseSafetensors(f *testing.F) {
	// Valid files.
	f.Add(rawST(`{}`, 0))
	f.Add(buildST(map[string]string{"format": "mlx"},
		stTensor{"language_model.model.layers.0.mlp.up_proj.weight", "U32", []int{4, 2}},
		stTensor{"language_model.model.layers.0.mlp.up_proj.scales", "BF16", []int{4, 1}},
		stTensor{"language_model.model.layers.0.mlp.up_proj.biases", "BF16", []int{4, 1}}))
	f.Add(buildST(nil, stTensor{"a", "F32", []int{3}}, stTensor{"s", "BF16", nil}, stTensor{"e", "I64", []int{0, 7}}))
	f.Add(rawST(`{"b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}`, 8))
	// Broken ones.
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{"))
	f.Add(rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4))
	f.Add(rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8))
	f.Add(rawST(`{"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}}`, 0))
	f.Add(rawST(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8))
	f.Add(rawST(`{"__metadata__":{"n":1},"a":{"dtype":"Q4","shape":[-1],"data_offsets":[0]}}`, 4))
	f.Add(append(binary.LittleEndian.AppendUint64(nil, 1<<62), "{}"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := parseSafetensors("fuzz.safetensors", data, 0)
		if err != nil {
			if ts != nil {
				t.Errorf("tensors returned along with %v", err)
			}
			return
		}
		checkViews(t, data, ts)
	})
}
