package cpu

import (
	"sync"
	"sync/atomic"
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
type pool struct {
	n    int             // goroutines per job, the caller included
	wake []chan struct{} // one per worker goroutine (n-1)
	done chan struct{}
	wg   sync.WaitGroup

	// The current job; written before the wake-up sends, so the workers see it.
	j     job
	total int
	chunk int
	next  atomic.Int64
}

func newPool(n int) *pool {
	p := &pool{n: n, done: make(chan struct{}, n)}
	p.wake = make([]chan struct{}, n-1)
	for i := range p.wake {
		p.wake[i] = make(chan struct{}, 1)
		p.wg.Add(1)
		go p.worker(i + 1)
	}
	return p
}

func (p *pool) worker(w int) {
	defer p.wg.Done()
	for range p.wake[w-1] {
		p.work(w)
		p.done <- struct{}{}
	}
}

// work takes chunks of the current job until none is left.
func (p *pool) work(w int) {
	for {
		lo := int(p.next.Add(int64(p.chunk))) - p.chunk
		if lo >= p.total {
			return
		}
		p.j.run(w, lo, min(lo+p.chunk, p.total))
	}
}

// parallel runs j over items [0, total) in chunks of chunk items, spread over
// the pool, and returns when all are done.
func (p *pool) parallel(total, chunk int, j job) {
	if total <= 0 {
		return
	}
	chunk = max(chunk, 1)
	chunks := (total + chunk - 1) / chunk
	if p.n == 1 || chunks == 1 {
		j.run(0, 0, total)
		return
	}
	p.j, p.total, p.chunk = j, total, chunk
	p.next.Store(0)
	helpers := min(p.n-1, chunks-1)
	for i := range helpers {
		p.wake[i] <- struct{}{}
	}
	p.work(0)
	for range helpers {
		<-p.done
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
	for _, c := range p.wake {
		close(c)
	}
	p.wg.Wait()
}
