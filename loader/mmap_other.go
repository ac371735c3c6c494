//go:build !linux && !darwin

package loader

import (
	"fmt"
	"os"
)

// mapFile reads path into memory where memory mapping is not implemented.
func mapFile(path string) ([]byte, func() error, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if len(data) == 0 {
		return nil, nil, fmt.Errorf("%s: file is empty", path)
	}
	return data, func() error { return nil }, nil
}
