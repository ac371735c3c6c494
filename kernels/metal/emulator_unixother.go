//go:build unix && !linux

package metal

import "os"

// reserve sets f's size (without reserving blocks: no fallocate here).
func reserve(f *os.File, size int64) error { return f.Truncate(size) }
