//go:build linux || darwin

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

var pageSize = int64(os.Getpagesize())

// release tells the kernel that bytes [start, end) of the read-only file
// mapping m, which starts at a page boundary, will not be read again soon:
// the whole pages inside are dropped from the process (the page cache keeps
// them), so the resident size stays near the chunks in flight instead of
// growing to the whole input. A page read again later just faults back in.
func release(m []byte, start, end int64) {
	start = (start + pageSize - 1) / pageSize * pageSize
	end = end / pageSize * pageSize
	if m == nil || start >= end || end > int64(len(m)) {
		return
	}
	_ = unix.Madvise(m[start:end], unix.MADV_DONTNEED) // advice only: errors change nothing
}
