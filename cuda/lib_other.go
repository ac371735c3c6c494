//go:build !linux

package cuda

func openLibraries() (*driver, error) { return nil, ErrNotLinux }
