package metal

import (
	"os"

	"golang.org/x/sys/unix"
)

// reserve allocates size bytes of f's blocks.
func reserve(f *os.File, size int64) error {
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil && err != unix.EOPNOTSUPP {
		return err
	}
	return f.Truncate(size)
}
