package cuda

import (
	"errors"

	"github.com/gemmoe/gemmoe/cuda"
	"github.com/gemmoe/gemmoe/kernels"
)

var _ kernels.Concurrent = (*Backend)(nil)

// Side runs f with its ops on a second stream that starts after everything
// enqueued before (an event the second stream waits on) and runs alongside
// the ops enqueued after Side returns, until Join. In a graph capture the
// two become parallel branches of the graph. See kernels.Concurrent. Like a
// capture, a Side belongs to the backend as a whole: ops that another
// goroutine enqueues while f runs go to the side stream too.
func (b *Backend) Side(f func() error) error {
	if err := b.enter(); err != nil {
		return err
	}
	if b.sideOpen {
		b.leave()
		return errors.New("cuda: Side before the Join of the one before")
	}
	if b.side == nil {
		s, err := cuda.NewStream()
		if err != nil {
			b.leave()
			return err
		}
		fork, err := cuda.NewEvent(false)
		if err != nil {
			s.Destroy()
			b.leave()
			return err
		}
		join, err := cuda.NewEvent(false)
		if err != nil {
			s.Destroy()
			fork.Destroy()
			b.leave()
			return err
		}
		b.side, b.forkEv, b.joinEv = s, fork, join
	}
	if err := b.forkEv.Record(b.stream); err != nil {
		b.leave()
		return err
	}
	if err := b.side.WaitEvent(b.forkEv); err != nil {
		b.leave()
		return err
	}
	b.main, b.stream = b.stream, b.side
	b.sideOpen, b.inSide = true, true
	b.leave()

	ferr := f()

	if err := b.enter(); err != nil {
		return errors.Join(ferr, err)
	}
	defer b.leave()
	b.stream, b.inSide = b.main, false
	return errors.Join(ferr, b.joinEv.Record(b.side))
}

// Join makes the ops enqueued from now on wait for those of the last Side,
// and frees what was released in between. Without an open Side it does
// nothing.
func (b *Backend) Join() error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	if !b.sideOpen {
		return nil
	}
	if b.inSide {
		return errors.New("cuda: Join inside the Side function")
	}
	err := b.stream.WaitEvent(b.joinEv)
	b.sideOpen = false
	for _, p := range b.deferred {
		b.release(p)
	}
	b.deferred = nil
	return err
}
