package main

import (
	"errors"
	"io"
)

// modelDir returns the model directory to use.
func modelDir(f flags, log io.Writer) (string, error) {
	if f.model == "" {
		return "", errors.New("no -model DIR given")
	}
	return f.model, nil
}
