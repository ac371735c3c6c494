package cpu

import (
	"runtime"
	"sync"
	"time"
)

// MeasureReadBandwidth returns the machine's memory read bandwidth in bytes
// per second: the best of six passes that sum a 512 MiB buffer with
// GOMAXPROCS goroutines. It takes about a second and allocates the buffer for
// the duration of the call. Benchmarks divide their weight-read rate by it
// (bw_frac).
func MeasureReadBandwidth() float64 {
	const size = 512 << 20
	buf := make([]uint64, size/8)
	for i := range buf { // fault the pages in
		buf[i] = uint64(i)
	}
	return measureReadBandwidth(buf, 6)
}

// measureReadBandwidth is MeasureReadBandwidth over a given buffer: the
// best of passes sums of it.
func measureReadBandwidth(buf []uint64, passes int) float64 {
	workers := runtime.GOMAXPROCS(0)
	per := (len(buf) + workers - 1) / workers
	sums := make([]uint64, workers*8) // padded against false sharing
	best := 0.0
	for range passes {
		var wg sync.WaitGroup
		start := time.Now()
		for w := range workers {
			lo, hi := w*per, min((w+1)*per, len(buf))
			wg.Add(1)
			go func() {
				defer wg.Done()
				sums[w*8] = sumWords(buf[lo:hi])
			}()
		}
		wg.Wait()
		if bw := float64(8*len(buf)) / time.Since(start).Seconds(); bw > best {
			best = bw
		}
	}
	runtime.KeepAlive(sums)
	return best
}

// sumWords returns the wrapping sum of s, with several independent chains so
// that loads, not adds, limit it.
func sumWords(s []uint64) uint64 {
	var a, b, c, d, e, f, g, h uint64
	i := 0
	for ; i+8 <= len(s); i += 8 {
		v := s[i : i+8 : i+8]
		a += v[0]
		b += v[1]
		c += v[2]
		d += v[3]
		e += v[4]
		f += v[5]
		g += v[6]
		h += v[7]
	}
	for ; i < len(s); i++ {
		a += s[i]
	}
	return a + b + c + d + e + f + g + h
}
