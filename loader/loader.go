// Package loader opens a Gemma 4 model directory: config.json (and the MLX
// quantization block in it), one or several memory-mapped safetensors files,
// generation_config.json and tokenizer.json when present. Tensors are views
// into the read-only mappings; nothing is copied. Each file's mapping starts
// at a page boundary and every tensor keeps its byte offset in its file, so a
// GPU backend can wrap a mapping as one device buffer.
package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// File is one mapped safetensors file.
type File struct {
	Path  string
	Data  []byte // the whole file, mapped read-only from a page boundary
	unmap func() error
}

// GenerationConfig holds the fields of generation_config.json that matter
// for decoding. Zero values mean "not given".
type GenerationConfig struct {
	EOSTokenIDs []int `json:"eos_token_ids,omitempty"`
	// Sampling defaults; they apply only when DoSample is set (as in
	// transformers, where do_sample false means greedy decoding).
	DoSample          bool    `json:"do_sample,omitempty"`
	Temperature       float64 `json:"temperature,omitempty"`
	TopK              int     `json:"top_k,omitempty"`
	TopP              float64 `json:"top_p,omitempty"`
	MinP              float64 `json:"min_p,omitempty"`
	RepetitionPenalty float64 `json:"repetition_penalty,omitempty"`
}

// Model is an opened model directory. Close it to unmap the files.
type Model struct {
	Dir        string
	Config     *Config
	Quant      *QuantConfig // nil for unquantized checkpoints
	Generation *GenerationConfig
	// TokenizerPath is the directory's tokenizer.json, or "" when absent.
	TokenizerPath string
	Files         []*File
	Tensors       map[string]*Tensor
	Weights       *Weights
}

// Open maps the model in dir and resolves its weights. Errors name the file
// or tensor at fault.
func Open(dir string) (*Model, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("model directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("model directory: %s is not a directory", dir)
	}
	cfgBytes, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model directory %s: %w", dir, err)
	}
	m := &Model{Dir: dir}
	if m.Config, err = ParseConfig(cfgBytes); err != nil {
		return nil, err
	}
	if m.Quant, err = ParseQuantConfig(cfgBytes); err != nil {
		return nil, err
	}
	if m.Generation, err = readGenerationConfig(dir); err != nil {
		return nil, err
	}
	if len(m.Generation.EOSTokenIDs) == 0 {
		m.Generation.EOSTokenIDs = m.Config.EOSTokenIDs
	}
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err == nil {
		m.TokenizerPath = filepath.Join(dir, "tokenizer.json")
	}
	files, err := shardFiles(dir)
	if err != nil {
		return nil, err
	}
	m.Tensors = map[string]*Tensor{}
	for i, path := range files {
		data, unmap, err := mapFile(path)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.Files = append(m.Files, &File{Path: path, Data: data, unmap: unmap})
		ts, err := parseSafetensors(filepath.Base(path), data, i)
		if err != nil {
			m.Close()
			return nil, err
		}
		for name, t := range ts {
			if prev, dup := m.Tensors[name]; dup {
				err := fmt.Errorf("tensor %q appears in both %s and %s", name,
					filepath.Base(m.Files[prev.File].Path), filepath.Base(path))
				m.Close() // after naming the files: Close drops m.Files
				return nil, err
			}
			m.Tensors[name] = t
		}
	}
	if m.Weights, err = mapWeights(m.Config, m.Tensors, m.Quant); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Close unmaps the files. Tensors must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	for _, f := range m.Files {
		if f.unmap != nil {
			errs = append(errs, f.unmap())
			f.unmap, f.Data = nil, nil
		}
	}
	m.Files = nil
	return errors.Join(errs...)
}

// MappedBytes is the total size of the mapped checkpoint files.
func (m *Model) MappedBytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += int64(len(f.Data))
	}
	return n
}

// shardFiles lists the safetensors files of dir: those named by
// model.safetensors.index.json, else the single *.safetensors file (a
// reference.safetensors beside it is not part of the model).
func shardFiles(dir string) ([]string, error) {
	idxPath := filepath.Join(dir, "model.safetensors.index.json")
	if b, err := os.ReadFile(idxPath); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("model.safetensors.index.json: %w", err)
		}
		if len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("model.safetensors.index.json: empty weight_map")
		}
		seen := map[string]bool{}
		var files []string
		for _, f := range idx.WeightMap {
			if strings.Contains(f, "/") || strings.Contains(f, `\`) {
				return nil, fmt.Errorf("model.safetensors.index.json: shard name %q must be a plain file name", f)
			}
			if !seen[f] {
				seen[f] = true
				files = append(files, filepath.Join(dir, f))
			}
		}
		sort.Strings(files)
		for _, f := range files {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("model.safetensors.index.json names a missing shard: %w", err)
			}
		}
		return files, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return []string{filepath.Join(dir, "model.safetensors")}, nil
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	var files []string
	for _, f := range matches {
		if filepath.Base(f) != "reference.safetensors" {
			files = append(files, f)
		}
	}
	switch len(files) {
	case 0:
		return nil, fmt.Errorf("model directory %s has no .safetensors file", dir)
	case 1:
		return files, nil
	}
	return nil, fmt.Errorf("model directory %s has %d .safetensors files but no model.safetensors.index.json", dir, len(files))
}

func readGenerationConfig(dir string) (*GenerationConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &GenerationConfig{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseGenerationConfig(b)
}

// ParseGenerationConfig reads a generation_config.json.
func ParseGenerationConfig(data []byte) (*GenerationConfig, error) {
	var raw struct {
		EOS               json.RawMessage `json:"eos_token_id"`
		DoSample          bool            `json:"do_sample"`
		Temperature       float64         `json:"temperature"`
		TopK              int             `json:"top_k"`
		TopP              float64         `json:"top_p"`
		MinP              float64         `json:"min_p"`
		RepetitionPenalty float64         `json:"repetition_penalty"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("generation_config.json: %w", err)
	}
	ids, err := parseIDs(raw.EOS)
	if err != nil {
		return nil, fmt.Errorf("generation_config.json: eos_token_id: %w", err)
	}
	return &GenerationConfig{EOSTokenIDs: ids, DoSample: raw.DoSample, Temperature: raw.Temperature, TopK: raw.TopK,
		TopP: raw.TopP, MinP: raw.MinP, RepetitionPenalty: raw.RepetitionPenalty}, nil
}
