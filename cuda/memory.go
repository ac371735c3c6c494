package cuda

import (
	"fmt"
	"math/bits"
	"sync"
)

// DevicePtr is a device address (CUdeviceptr).
type DevicePtr uint64

// MemAlloc allocates n bytes of device memory (cuMemAlloc_v2; never managed
// memory). The memory is not initialized.
func MemAlloc(n int64) (DevicePtr, error) {
	if n <= 0 {
		return 0, fmt.Errorf("cuda: allocation of %d bytes", n)
	}
	var p DevicePtr
	if r := drv.call(drv.cuMemAlloc, uintptr(up(&p)), uintptr(n)); r != 0 {
		return 0, drv.err(fmt.Sprintf("cuMemAlloc(%d bytes)", n), r)
	}
	return p, nil
}

// MemFree frees memory from MemAlloc.
func MemFree(p DevicePtr) error {
	if p == 0 {
		return nil
	}
	return drv.check("cuMemFree", drv.call(drv.cuMemFree, uintptr(p)))
}

// MemsetD8Async sets n bytes at p to v, in stream order.
func MemsetD8Async(p DevicePtr, v byte, n int64, s *Stream) error {
	return drv.check("cuMemsetD8Async", drv.call(drv.cuMemsetD8Async, uintptr(p), uintptr(v), uintptr(n), s.h))
}

// MemsetD32Async sets n 32-bit words at p (4-byte aligned) to v, in stream order.
func MemsetD32Async(p DevicePtr, v uint32, n int64, s *Stream) error {
	return drv.check("cuMemsetD32Async", drv.call(drv.cuMemsetD32Async, uintptr(p), uintptr(v), uintptr(n), s.h))
}

// MemcpyDtoDAsync copies n bytes between device addresses, in stream order.
func MemcpyDtoDAsync(dst, src DevicePtr, n int64, s *Stream) error {
	return drv.check("cuMemcpyDtoDAsync", drv.call(drv.cuMemcpyDtoDAsync, uintptr(dst), uintptr(src), uintptr(n), s.h))
}

// memcpyHtoDAsync copies len(src) bytes of pinned host memory to dst.
func memcpyHtoDAsync(dst DevicePtr, src []byte, s *Stream) error {
	return drv.check("cuMemcpyHtoDAsync", drv.call(drv.cuMemcpyHtoDAsync, uintptr(dst), uintptr(up(&src[0])), uintptr(len(src)), s.h))
}

// memcpyDtoHAsync copies len(dst) bytes from src into pinned host memory.
func memcpyDtoHAsync(dst []byte, src DevicePtr, s *Stream) error {
	return drv.check("cuMemcpyDtoHAsync", drv.call(drv.cuMemcpyDtoHAsync, uintptr(up(&dst[0])), uintptr(src), uintptr(len(dst)), s.h))
}

// HostAlloc allocates n bytes of pinned (page-locked) host memory, which the
// GPU can copy from and to asynchronously. Free it with HostFree.
func HostAlloc(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: pinned allocation of %d bytes", n)
	}
	var p up
	if r := drv.call(drv.cuMemHostAlloc, uintptr(up(&p)), uintptr(n), 0); r != 0 {
		return nil, drv.err(fmt.Sprintf("cuMemHostAlloc(%d bytes)", n), r)
	}
	return unsafeBytes(p, n), nil
}

// HostFree frees memory from HostAlloc.
func HostFree(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return drv.check("cuMemFreeHost", drv.call(drv.cuMemFreeHost, uintptr(up(&b[0]))))
}

// hostRegister page-locks b, host memory the caller keeps alive (and in
// place) until hostUnregister, so that copies to and from it run as from
// HostAlloc memory.
func hostRegister(b []byte) error {
	return drv.check("cuMemHostRegister", drv.call(drv.cuMemHostRegister, uintptr(up(&b[0])), uintptr(len(b)), 0))
}

// hostUnregister undoes hostRegister.
func hostUnregister(b []byte) error {
	return drv.check("cuMemHostUnregister", drv.call(drv.cuMemHostUnregister, uintptr(up(&b[0]))))
}

// Pool caches device allocations by size class (at most 25% larger than
// asked) so that the many short-lived activations of a forward pass do not
// call cuMemAlloc and cuMemFree, which synchronize. It is safe for concurrent
// use. Memory returned to the pool is reused in stream order, which is safe
// when all work runs on one stream.
type Pool struct {
	mu     sync.Mutex
	free   map[int64][]DevicePtr
	live   map[DevicePtr]int64
	cached int64 // bytes in free lists
	inUse  int64 // bytes handed out
	// BeforeTrim, if set, runs before cached memory is freed to make room
	// (typically a stream sync, so no pending work still uses it).
	BeforeTrim func() error
}

// NewPool returns an empty pool.
func NewPool() *Pool {
	return &Pool{free: map[int64][]DevicePtr{}, live: map[DevicePtr]int64{}}
}

// sizeClass rounds n up to one of 4 steps per power of two (minimum 256 bytes).
func sizeClass(n int64) int64 {
	if n <= 256 {
		return 256
	}
	k := 63 - bits.LeadingZeros64(uint64(n)) // 2^k <= n
	step := int64(1) << (k - 2)
	return (n + step - 1) / step * step
}

// Alloc returns at least n bytes of device memory. On out-of-memory it frees
// the cached blocks (after BeforeTrim) and tries once more.
func (p *Pool) Alloc(n int64) (DevicePtr, error) {
	if n <= 0 {
		return 0, fmt.Errorf("cuda: pool allocation of %d bytes", n)
	}
	c := sizeClass(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.free[c]; len(l) > 0 {
		d := l[len(l)-1]
		p.free[c] = l[:len(l)-1]
		p.cached -= c
		p.live[d] = c
		p.inUse += c
		return d, nil
	}
	d, err := MemAlloc(c)
	if IsOutOfMemory(err) && p.cached > 0 {
		if err = p.trimLocked(); err == nil {
			d, err = MemAlloc(c)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("%w (pool holds %d MiB in use, device memory exhausted)", err, p.inUse>>20)
	}
	p.live[d] = c
	p.inUse += c
	return d, nil
}

// Free returns memory from Alloc to the pool. Unknown pointers are ignored.
func (p *Pool) Free(d DevicePtr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.live[d]
	if !ok {
		return
	}
	delete(p.live, d)
	p.inUse -= c
	p.free[c] = append(p.free[c], d)
	p.cached += c
}

// Stats returns the bytes handed out and the bytes cached for reuse.
func (p *Pool) Stats() (inUse, cached int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse, p.cached
}

// Trim frees the cached (unused) blocks.
func (p *Pool) Trim() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.trimLocked()
}

func (p *Pool) trimLocked() error {
	if p.BeforeTrim != nil {
		if err := p.BeforeTrim(); err != nil {
			return err
		}
	}
	var first error
	for c, l := range p.free {
		for _, d := range l {
			if err := MemFree(d); err != nil && first == nil {
				first = err
			}
		}
		delete(p.free, c)
	}
	p.cached = 0
	return first
}

// Close frees all memory of the pool, live blocks included.
func (p *Pool) Close() error {
	err := p.Trim()
	p.mu.Lock()
	defer p.mu.Unlock()
	for d := range p.live {
		if e := MemFree(d); e != nil && err == nil {
			err = e
		}
	}
	p.live = map[DevicePtr]int64{}
	p.inUse = 0
	return err
}

// Staging moves host bytes to and from the device through a ring of pinned
// buffers, so that copies run asynchronously and large transfers are
// chunked. It is not safe for concurrent use.
type Staging struct {
	slots []stagingSlot
	next  int

	// A Download target that is reused (the logits a decode loop reads
	// every token) is page-locked and copied into directly, skipping the
	// pinned slot and the host copy out of it: reg is that buffer (held, so
	// that it stays alive), last the one before it, noReg set once the
	// driver refused a registration.
	reg   []byte
	last  downloadTarget
	noReg bool
}

// downloadTarget identifies a Download's destination (address and length).
type downloadTarget struct {
	p uintptr
	n int
}

// directMin is the smallest Download worth a registered destination.
const directMin = 64 << 10

type stagingSlot struct {
	buf  []byte
	ev   *Event
	busy bool // a copy using buf was enqueued; ev marks its end
}

// NewStaging allocates n pinned slots of slotBytes each.
func NewStaging(n, slotBytes int) (*Staging, error) {
	st := &Staging{}
	for i := 0; i < n; i++ {
		b, err := HostAlloc(slotBytes)
		if err != nil {
			st.Close()
			return nil, err
		}
		ev, err := NewEvent(false)
		if err != nil {
			HostFree(b)
			st.Close()
			return nil, err
		}
		st.slots = append(st.slots, stagingSlot{buf: b, ev: ev})
	}
	return st, nil
}

// slot returns the next slot once the copy that last used it has finished.
func (st *Staging) slot() (*stagingSlot, error) {
	s := &st.slots[st.next]
	st.next = (st.next + 1) % len(st.slots)
	if s.busy {
		if err := s.ev.Sync(); err != nil {
			return nil, err
		}
		s.busy = false
	}
	return s, nil
}

// Upload enqueues a copy of src to dst on s. It returns once src has been
// copied into pinned memory; the device copy may still be running.
func (st *Staging) Upload(s *Stream, dst DevicePtr, src []byte) error {
	for off := 0; off < len(src); {
		sl, err := st.slot()
		if err != nil {
			return err
		}
		n := copy(sl.buf, src[off:])
		if err := memcpyHtoDAsync(dst+DevicePtr(off), sl.buf[:n], s); err != nil {
			return err
		}
		if err := sl.ev.Record(s); err != nil {
			return err
		}
		sl.busy = true
		off += n
	}
	return nil
}

// Download copies src into dst after the work enqueued on s before it, and
// returns when dst holds the bytes. A destination of at least 64 KiB that
// was also the previous Download's is page-locked (and held until Close or
// the next such buffer) and copied into directly.
func (st *Staging) Download(s *Stream, dst []byte, src DevicePtr) error {
	if st.direct(dst) {
		if err := memcpyDtoHAsync(dst, src, s); err != nil {
			return err
		}
		return s.Sync()
	}
	type pend struct {
		sl  *stagingSlot
		off int
		n   int
	}
	var queue []pend
	drain := func() error {
		p := queue[0]
		queue = queue[1:]
		if err := p.sl.ev.Sync(); err != nil {
			return err
		}
		p.sl.busy = false
		copy(dst[p.off:p.off+p.n], p.sl.buf[:p.n])
		return nil
	}
	for off := 0; off < len(dst); {
		if len(queue) == len(st.slots) {
			if err := drain(); err != nil {
				return err
			}
		}
		sl, err := st.slot()
		if err != nil {
			return err
		}
		n := min(len(sl.buf), len(dst)-off)
		if err := memcpyDtoHAsync(sl.buf[:n], src+DevicePtr(off), s); err != nil {
			return err
		}
		if err := sl.ev.Record(s); err != nil {
			return err
		}
		sl.busy = true
		queue = append(queue, pend{sl, off, n})
		off += n
	}
	for len(queue) > 0 {
		if err := drain(); err != nil {
			return err
		}
	}
	return nil
}

// direct reports whether dst is page-locked for a direct copy: it is when
// it was the destination of the Download before this one too (a buffer a
// loop reuses), replacing the buffer registered before.
func (st *Staging) direct(dst []byte) bool {
	if len(dst) < directMin || st.noReg {
		return false
	}
	t := downloadTarget{uintptr(up(&dst[0])), len(dst)}
	if st.reg != nil && t == (downloadTarget{uintptr(up(&st.reg[0])), len(st.reg)}) {
		return true
	}
	if t != st.last {
		st.last = t
		return false
	}
	if err := st.unregister(); err != nil {
		st.noReg = true
		return false
	}
	if err := hostRegister(dst); err != nil {
		st.noReg = true // the staged path works everywhere
		return false
	}
	st.reg = dst
	return true
}

// unregister releases the registered Download target, if any.
func (st *Staging) unregister() error {
	if st.reg == nil {
		return nil
	}
	err := hostUnregister(st.reg)
	st.reg = nil
	return err
}

// Close waits for pending copies and frees the pinned memory.
func (st *Staging) Close() error {
	first := st.unregister()
	for i := range st.slots {
		s := &st.slots[i]
		if s.busy {
			if err := s.ev.Sync(); err != nil && first == nil {
				first = err
			}
		}
		if err := s.ev.Destroy(); err != nil && first == nil {
			first = err
		}
		if err := HostFree(s.buf); err != nil && first == nil {
			first = err
		}
	}
	st.slots = nil
	return first
}
