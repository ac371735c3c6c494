package loader

import (
	"strings"
	"testing"
)

// TestPerLayerConfigObject: transformers writes per_layer_config as an object
// keyed by layer index holding only the layers that differ.
func TestPerLayerConfigObject(t *testing.T) {
	base := `{"model_type":"gemma4_text","vocab_size":64,"hidden_size":32,"num_hidden_layers":4,
		"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"intermediate_size":48,"sliding_window":8,
		"layer_types":["sliding_attention","sliding_attention","sliding_attention","full_attention"],
		"per_layer_config":%s}`
	c, err := ParseConfig([]byte(strings.Replace(base, "%s", `{"3":{"head_dim":16,"num_key_value_heads":1}}`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Layers[3]; l.HeadDim != 16 || l.KVHeads != 1 {
		t.Fatalf("layer 3: head dim %d, %d KV heads; want 16 and 1", l.HeadDim, l.KVHeads)
	}
	if l := c.Layers[0]; l.HeadDim != 8 || l.KVHeads != 2 {
		t.Fatalf("layer 0 changed: head dim %d, %d KV heads", l.HeadDim, l.KVHeads)
	}
	for _, bad := range []string{`{"4":{}}`, `{"x":{}}`, `{"-1":{}}`, `7`} {
		if _, err := ParseConfig([]byte(strings.Replace(base, "%s", bad, 1))); err == nil || !strings.Contains(err.Error(), "per_layer_config") {
			t.Errorf("per_layer_config %s: got %v, want an error naming per_layer_config", bad, err)
		}
	}
}
