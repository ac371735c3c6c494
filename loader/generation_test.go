package loader

import "testing"

func TestParseGenerationConfig(t *testing.T) {
	g, err := ParseGenerationConfig([]byte(`{"do_sample": true, "temperature": 0.7, "top_k": 64, "top_p": 0.95,
		"min_p": 0.05, "repetition_penalty": 1.1, "eos_token_id": [1, 106]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !g.DoSample || g.Temperature != 0.7 || g.TopK != 64 || g.TopP != 0.95 || g.MinP != 0.05 ||
		g.RepetitionPenalty != 1.1 || len(g.EOSTokenIDs) != 2 || g.EOSTokenIDs[1] != 106 {
		t.Fatalf("parsed %+v", g)
	}
	for _, bad := range []string{`{`, `{"eos_token_id": "one"}`} {
		if _, err := ParseGenerationConfig([]byte(bad)); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}
