package cuda

// Stream is a CUstream. All methods need the owning context bound.
type Stream struct{ h uintptr }

// NewStream creates a non-blocking stream (it does not synchronize with the
// legacy default stream).
func NewStream() (*Stream, error) {
	s := &Stream{}
	const nonBlocking = 1
	if r := drv.call(drv.cuStreamCreate, uintptr(up(&s.h)), nonBlocking); r != 0 {
		return nil, drv.err("cuStreamCreate", r)
	}
	return s, nil
}

// Handle returns the raw CUstream.
func (s *Stream) Handle() uintptr { return s.h }

// Sync waits for all work on the stream.
func (s *Stream) Sync() error {
	return drv.check("cuStreamSynchronize", drv.call(drv.cuStreamSynchronize, s.h))
}

// Destroy destroys the stream.
func (s *Stream) Destroy() error {
	if s.h == 0 {
		return nil
	}
	r := drv.call(drv.cuStreamDestroy, s.h)
	s.h = 0
	return drv.check("cuStreamDestroy", r)
}

// WaitEvent makes future work on s wait for e.
func (s *Stream) WaitEvent(e *Event) error {
	return drv.check("cuStreamWaitEvent", drv.call(drv.cuStreamWaitEvent, s.h, e.h, 0))
}

// Capture modes for BeginCapture.
const (
	CaptureGlobal      = 0
	CaptureThreadLocal = 1
	CaptureRelaxed     = 2
)

// BeginCapture starts recording the work enqueued on s into a graph instead
// of running it. Relaxed mode is used: Go may run the capturing goroutine on
// several threads, so thread-scoped checks would misfire.
func (s *Stream) BeginCapture() error {
	return drv.check("cuStreamBeginCapture", drv.call(drv.cuStreamBeginCapture, s.h, CaptureRelaxed))
}

// EndCapture ends the capture started by BeginCapture and returns the graph.
func (s *Stream) EndCapture() (*Graph, error) {
	g := &Graph{}
	if r := drv.call(drv.cuStreamEndCapture, s.h, uintptr(up(&g.h))); r != 0 {
		return nil, drv.err("cuStreamEndCapture", r)
	}
	return g, nil
}

// IsCapturing reports whether s is recording a graph.
func (s *Stream) IsCapturing() (bool, error) {
	var st int32
	if r := drv.call(drv.cuStreamIsCapturing, s.h, uintptr(up(&st))); r != 0 {
		return false, drv.err("cuStreamIsCapturing", r)
	}
	return st == 1, nil
}

// Graph is a captured CUgraph.
type Graph struct{ h uintptr }

// Instantiate makes an executable graph.
func (g *Graph) Instantiate() (*GraphExec, error) {
	e := &GraphExec{}
	if r := drv.call(drv.cuGraphInstantiateWithFlags, uintptr(up(&e.h)), g.h, 0); r != 0 {
		return nil, drv.err("cuGraphInstantiateWithFlags", r)
	}
	return e, nil
}

// Destroy destroys the graph (executable graphs made from it stay valid).
func (g *Graph) Destroy() error {
	if g.h == 0 {
		return nil
	}
	r := drv.call(drv.cuGraphDestroy, g.h)
	g.h = 0
	return drv.check("cuGraphDestroy", r)
}

// GraphExec is an instantiated, launchable graph.
type GraphExec struct{ h uintptr }

// Launch enqueues the whole graph on s.
func (e *GraphExec) Launch(s *Stream) error {
	return drv.check("cuGraphLaunch", drv.call(drv.cuGraphLaunch, e.h, s.h))
}

// Destroy destroys the executable graph.
func (e *GraphExec) Destroy() error {
	if e.h == 0 {
		return nil
	}
	r := drv.call(drv.cuGraphExecDestroy, e.h)
	e.h = 0
	return drv.check("cuGraphExecDestroy", r)
}

// Event is a CUevent.
type Event struct{ h uintptr }

// NewEvent creates an event; timing events can measure elapsed time, the
// others are cheaper to record and wait for.
func NewEvent(timing bool) (*Event, error) {
	e := &Event{}
	flags := uintptr(0x2) // CU_EVENT_DISABLE_TIMING
	if timing {
		flags = 0
	}
	if r := drv.call(drv.cuEventCreate, uintptr(up(&e.h)), flags); r != 0 {
		return nil, drv.err("cuEventCreate", r)
	}
	return e, nil
}

// Record records the event on s.
func (e *Event) Record(s *Stream) error {
	return drv.check("cuEventRecord", drv.call(drv.cuEventRecord, e.h, s.h))
}

// Sync waits until the work before the event's last record has finished.
func (e *Event) Sync() error {
	return drv.check("cuEventSynchronize", drv.call(drv.cuEventSynchronize, e.h))
}

// Done reports whether the work before the event's last record has finished.
func (e *Event) Done() (bool, error) {
	r := drv.call(drv.cuEventQuery, e.h)
	switch r {
	case Success:
		return true, nil
	case ErrNotReady:
		return false, nil
	}
	return false, drv.err("cuEventQuery", r)
}

// Destroy destroys the event.
func (e *Event) Destroy() error {
	if e.h == 0 {
		return nil
	}
	r := drv.call(drv.cuEventDestroy, e.h)
	e.h = 0
	return drv.check("cuEventDestroy", r)
}

// Elapsed returns the milliseconds between two recorded timing events.
func Elapsed(start, end *Event) (float32, error) {
	var ms float32
	if r := drv.call(drv.cuEventElapsedTime, uintptr(up(&ms)), start.h, end.h); r != 0 {
		return 0, drv.err("cuEventElapsedTime", r)
	}
	return ms, nil
}
