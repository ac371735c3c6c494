package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// job is a unit of parallel work: run handles items [lo, hi) on worker w (0 is
// the calling goroutine). Jobs are preallocated structs passed by pointer, so
// dispatching one does not allocate.
type job interface {
	run(w, lo, hi int)
}

// pool is a fixed set of worker goroutines that execute jobs in chunks; the
// goroutine that calls parallel works too. It is started by New and stopped by
// Close.
//
// A decode step is a long series of short ops (tens of microseconds each),
// and waking a parked goroutine takes tens of microseconds too, more on a
// loaded machine. So a worker that has finished a job spins for a short
// while (spinFor) watching for the next one before it parks; back-to-back
// ops then start on all threads at once. (Spinning longer does not pay on a
// machine with other busy processes: the spinning thread competes with the
// caller for the cores.)
//
// Chunks are claimed from one atomic word holding the job's generation, its
// number of chunks and the next chunk, so that a worker that arrives late
// (woken from its park, or preempted) either claims a chunk of the job it
// saw or finds the job over, and never reads the fields of a job that the
// caller is already preparing. inflight counts the workers between their
// claim attempt and the end of their chunk; the caller returns when every
// chunk is claimed and inflight is zero.
type pool struct {
	n    int // goroutines per job, the caller included
	wake []chan struct{}
	park []atomic.Bool // worker w-1 is parked (or about to be)
	wg   sync.WaitGroup
	quit atomic.Bool

	// The current job; written before next publishes its generation.
	j        job
	total    int
	chunk    int
	next     atomic.Uint64 // gen<<32 | chunks<<16 | next chunk
	inflight atomic.Int32
	gen      uint32
}

// spinFor is how long an idle worker watches for the next job before it
// parks.
const spinFor = 50 * time.Microsecond

// maxChunks bounds the chunks of one job (16 bits of the claim word).
const maxChunks = 1<<16 - 1

func newPool(n int) *pool {
	p := &pool{n: n}
	p.wake = make([]chan struct{}, n-1)
	p.park = make([]atomic.Bool, n-1)
	for i := range p.wake {
		p.wake[i] = make(chan struct{}, 1)
		p.wg.Add(1)
		go p.worker(i + 1)
	}
	return p
}

func (p *pool) worker(w int) {
	defer p.wg.Done()
	var seen uint32
	for {
		// Spin, then park, until a job of a new generation is published.
		t0 := time.Now()
		for i := 0; ; i++ {
			if g := uint32(p.next.Load() >> 32); g != seen {
				seen = g
				break
			}
			if p.quit.Load() {
				return
			}
			if i&255 == 255 {
				if time.Since(t0) > spinFor {
					p.park[w-1].Store(true)
					if g := uint32(p.next.Load() >> 32); g != seen || p.quit.Load() {
						if !p.park[w-1].CompareAndSwap(true, false) {
							<-p.wake[w-1] // the caller is waking us: take its token
						}
					} else {
						<-p.wake[w-1]
					}
					t0 = time.Now()
				}
			}
		}
		p.work(w, seen)
	}
}

// work claims chunks of generation gen until none is left.
func (p *pool) work(w int, gen uint32) {
	for {
		p.inflight.Add(1)
		v := p.next.Load()
		chunks, c := int(v>>16&0xffff), int(v&0xffff)
		if uint32(v>>32) != gen || c >= chunks || !p.next.CompareAndSwap(v, v+1) {
			p.inflight.Add(-1)
			if uint32(v>>32) != gen || c >= chunks {
				return
			}
			continue
		}
		lo := c * p.chunk
		p.j.run(w, lo, min(lo+p.chunk, p.total))
		p.inflight.Add(-1)
	}
}

// parallel runs j over items [0, total) in chunks of chunk items, spread over
// the pool, and returns when all are done.
func (p *pool) parallel(total, chunk int, j job) {
	if total <= 0 {
		return
	}
	chunk = max(chunk, 1, (total+maxChunks-1)/maxChunks)
	chunks := (total + chunk - 1) / chunk
	if p.n == 1 || chunks == 1 {
		j.run(0, 0, total)
		return
	}
	p.j, p.total, p.chunk = j, total, chunk
	p.gen++
	p.next.Store(uint64(p.gen)<<32 | uint64(chunks)<<16)
	for i := range p.park {
		if p.park[i].CompareAndSwap(true, false) {
			p.wake[i] <- struct{}{}
		}
	}
	p.work(0, p.gen)
	for i := 0; p.inflight.Load() != 0; i++ {
		if i > 64 {
			runtime.Gosched()
		}
	}
	p.j = nil
}

// chunkFor returns a chunk size that splits total items into about four
// chunks per goroutine, at least minChunk items each.
func (p *pool) chunkFor(total, minChunk int) int {
	return max(minChunk, (total+4*p.n-1)/(4*p.n))
}

// close stops the workers and waits for them to exit.
func (p *pool) close() {
	p.quit.Store(true)
	for i := range p.park {
		if p.park[i].CompareAndSwap(true, false) {
			p.wake[i] <- struct{}{}
		}
	}
	p.wg.Wait()
}
