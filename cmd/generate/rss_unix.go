//go:build linux || darwin

package main

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// peakRSS returns the process's peak resident set size in bytes.
func peakRSS() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	if runtime.GOOS == "darwin" {
		return ru.Maxrss // bytes on macOS
	}
	return ru.Maxrss * 1024 // KiB on Linux
}
