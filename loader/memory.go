package loader

import "fmt"

// OpenBytes resolves a model from a config.json and safetensors images held
// in memory (synthetic benchmark models, tests). The images must stay valid
// while the model is used; Close does not free them.
func OpenBytes(config []byte, files ...[]byte) (*Model, error) {
	m := &Model{Dir: "(memory)", Generation: &GenerationConfig{}}
	var err error
	if m.Config, err = ParseConfig(config); err != nil {
		return nil, err
	}
	if m.Quant, err = ParseQuantConfig(config); err != nil {
		return nil, err
	}
	m.Generation.EOSTokenIDs = m.Config.EOSTokenIDs
	m.Tensors = map[string]*Tensor{}
	for i, data := range files {
		name := fmt.Sprintf("image %d", i)
		m.Files = append(m.Files, &File{Path: name, Data: data})
		ts, err := parseSafetensors(name, data, i)
		if err != nil {
			return nil, err
		}
		for n, t := range ts {
			if _, dup := m.Tensors[n]; dup {
				return nil, fmt.Errorf("tensor %q appears in two images", n)
			}
			m.Tensors[n] = t
		}
	}
	if m.Weights, err = mapWeights(m.Config, m.Tensors, m.Quant); err != nil {
		return nil, err
	}
	return m, nil
}
