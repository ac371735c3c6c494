package cpu

import (
	"os"

	"golang.org/x/sys/unix"
)

// benchBytes returns n bytes for benchmark weights, mapped with transparent
// huge pages where the kernel grants them, as a model file's mapping gets
// them from a page cache of large folios: the kernels stream their weights,
// and with 4 KiB pages they leave a page (and miss the TLB) every 4 KiB.
// GEMMOE_BENCH_SMALL_PAGES=1 keeps 4 KiB pages, to compare. free unmaps them.
func benchBytes(n int64) (data []byte, free func(), err error) {
	data, err = unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, nil, err
	}
	if os.Getenv("GEMMOE_BENCH_SMALL_PAGES") != "1" {
		_ = unix.Madvise(data, unix.MADV_HUGEPAGE)
	}
	return data, func() { _ = unix.Munmap(data) }, nil
}
