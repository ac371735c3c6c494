package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// availableMemory reads MemAvailable from /proc/meminfo.
func availableMemory() (int64, bool) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024, err == nil
		}
	}
	return 0, false
}

// modelAlloc maps the synthetic model's memory anonymously and asks for
// transparent huge pages, as a model file's mapping gets them from the page
// cache on kernels with large folios (the CPU backend streams every weight
// each token, and 4 KiB pages cost it a TLB miss every 4 KiB). Where the
// kernel says no, the mapping keeps small pages.
func modelAlloc(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes for the synthetic model: %w", n, err)
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b, nil
}
