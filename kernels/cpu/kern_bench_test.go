package cpu

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/gemmoe/gemmoe/dtype"
)

// threadCPU returns the CPU time of the calling thread (Linux; 0 where
// RUSAGE_THREAD is not supported).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(1, &ru) != nil { // RUSAGE_THREAD
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKernelCached runs the decode matmul kernels on one thread with
// weights that fit the L2 cache: the compute ceiling of each kernel set (and
// of the int8 path with GEMMOE_CPU_INT8=1), per second of the thread's CPU
// time (cpuGB/s, immune to other processes taking the core) as well as of
// wall time.
func BenchmarkKernelCached(b *testing.B) {
	for _, ks := range append(KernelSets(), "generic") {
		for _, f := range []benchFormat{fmtQ4, fmtQ8, fmtBF16} {
			b.Run(fmt.Sprintf("%s/%s", ks, f.name), func(b *testing.B) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				be := New(WithThreads(1), WithKernels(ks))
				defer be.Close()
				const n, k = 128, 2816
				old := benchSpan
				benchSpan = 1
				get, _, per := benchWeights(b, be, f, 0, n, k)
				benchSpan = old
				w := get(0)
				x, _ := be.Alloc(dtype.F32, 1, k)
				y, _ := be.Alloc(dtype.F32, 1, n)
				b.SetBytes(per)
				b.ResetTimer()
				c0 := threadCPU()
				for range b.N {
					if err := be.MatMul(y, x, w); err != nil {
						b.Fatal(err)
					}
				}
				if c := threadCPU() - c0; c > 0 {
					b.ReportMetric(float64(per)*float64(b.N)/c.Seconds()/1e9, "cpuGB/s")
				}
			})
		}
	}
}

// BenchmarkStream is BenchmarkMatMul's gate_up shape at 4 and 8 bits with
// one thread and with two: how far the threads scale from memory.
func BenchmarkStream(b *testing.B) {
	for _, th := range []int{1, 2} {
		for _, f := range []benchFormat{fmtQ4, fmtQ8} {
			b.Run(fmt.Sprintf("%s/threads%d", f.name, th), func(b *testing.B) {
				readBandwidth(b)
				be := New(WithThreads(th))
				defer be.Close()
				get, _, per := benchWeights(b, be, f, 0, 2112, 2816)
				x, _ := be.Alloc(dtype.F32, 1, 2816)
				y, _ := be.Alloc(dtype.F32, 1, 2112)
				b.SetBytes(per)
				b.ResetTimer()
				for i := range b.N {
					if err := be.MatMul(y, x, get(i)); err != nil {
						b.Fatal(err)
					}
				}
				report(b, per)
			})
		}
	}
}
