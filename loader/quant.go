package loader

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// QuantSpec is the quantization of one module: MLX affine with Bits and Group.
type QuantSpec struct {
	Bits  int    `json:"bits"`
	Group int    `json:"group_size"`
	Mode  string `json:"mode,omitempty"`
}

// QuantConfig is the MLX "quantization" block of config.json: defaults plus
// per-module overrides keyed by module path (e.g.
// "language_model.model.layers.0.router.proj"). A module is quantized iff
// its ".scales" tensor exists; the config gives its bits and group.
type QuantConfig struct {
	Default   QuantSpec            `json:"default"`
	Overrides map[string]QuantSpec `json:"overrides,omitempty"`
	// Dense lists modules the config marks as not quantized (override false).
	Dense map[string]bool `json:"dense,omitempty"`
}

// ParseQuantConfig reads the "quantization" (or "quantization_config") block
// of config.json; it returns nil when there is none.
func ParseQuantConfig(data []byte) (*QuantConfig, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	raw, ok := top["quantization"]
	if !ok {
		raw, ok = top["quantization_config"]
	}
	if !ok || string(raw) == "null" {
		return nil, nil
	}
	var block map[string]json.RawMessage
	if err := json.Unmarshal(raw, &block); err != nil {
		return nil, fmt.Errorf("config.json: quantization: %w", err)
	}
	q := &QuantConfig{Overrides: map[string]QuantSpec{}, Dense: map[string]bool{}}
	var mode string
	for k, v := range block {
		switch k {
		case "bits":
			if err := json.Unmarshal(v, &q.Default.Bits); err != nil {
				return nil, fmt.Errorf("config.json: quantization.bits: %w", err)
			}
		case "group_size":
			if err := json.Unmarshal(v, &q.Default.Group); err != nil {
				return nil, fmt.Errorf("config.json: quantization.group_size: %w", err)
			}
		case "mode":
			if err := json.Unmarshal(v, &mode); err != nil {
				return nil, fmt.Errorf("config.json: quantization.mode: %w", err)
			}
		case "quant_method":
			// Hugging Face writes the method name here; MLX blocks have none.
		default:
			var b bool
			if err := json.Unmarshal(v, &b); err == nil {
				if !b {
					q.Dense[k] = true
				}
				continue
			}
			var s QuantSpec
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, fmt.Errorf("config.json: quantization[%q]: %w", k, err)
			}
			q.Overrides[k] = s
		}
	}
	if mode == "" {
		mode = "affine"
	}
	q.Default.Mode = mode
	for k, s := range q.Overrides {
		if s.Mode == "" {
			s.Mode = mode
		}
		if s.Bits == 0 {
			s.Bits = q.Default.Bits
		}
		if s.Group == 0 {
			s.Group = q.Default.Group
		}
		q.Overrides[k] = s
	}
	return q, nil
}

// For returns the spec of the module at path (overrides matched on the path
// with or without the "language_model." and "model." prefixes).
func (q *QuantConfig) For(path string) QuantSpec {
	for _, p := range pathForms(path) {
		if s, ok := q.Overrides[p]; ok {
			return s
		}
	}
	return q.Default
}

// pathForms returns the spellings a module path may have in a config.
func pathForms(path string) []string {
	forms := []string{path}
	trimmed := path
	for _, pre := range []string{"language_model.", "model.", "language_model."} {
		trimmed = strings.TrimPrefix(trimmed, pre)
		forms = append(forms, trimmed)
	}
	return forms
}

// Check validates a spec for the module at path: affine mode, bits in
// {2,3,4,5,6,8}, group in {32,64,128}.
func (s QuantSpec) Check(path string) error {
	switch s.Mode {
	case "", "affine":
	case "mxfp4", "nvfp4", "mxfp8":
		return fmt.Errorf("%s: quantization mode %q is not supported yet (only MLX affine)", path, s.Mode)
	default:
		return fmt.Errorf("%s: unknown quantization mode %q", path, s.Mode)
	}
	switch s.Bits {
	case 2, 3, 4, 5, 6, 8:
	default:
		return fmt.Errorf("%s: %d-bit affine quantization is not supported (want 2, 3, 4, 5, 6 or 8)", path, s.Bits)
	}
	switch s.Group {
	case 32, 64, 128:
	default:
		return fmt.Errorf("%s: group size %d is not supported (want 32, 64 or 128)", path, s.Group)
	}
	return nil
}

// Summary lists the distinct (bits, group) pairs in use, for reports.
func (q *QuantConfig) Summary() []QuantSpec {
	seen := map[QuantSpec]bool{q.Default: true}
	out := []QuantSpec{q.Default}
	for _, s := range q.Overrides {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Bits != out[j].Bits {
			return out[i].Bits < out[j].Bits
		}
		return out[i].Group < out[j].Group
	})
	return out
}
