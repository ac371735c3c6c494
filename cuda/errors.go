package cuda

import (
	"errors"
	"fmt"
)

// Result is a CUresult (driver API) or nvrtcResult code.
type Result int32

// Driver result codes this package checks for.
const (
	Success          Result = 0
	ErrOutOfMemory   Result = 2
	ErrNotReady      Result = 600
	ErrNoDevice      Result = 100
	ErrNotPermitted  Result = 800
	ErrNotSupported  Result = 801
	ErrStreamCapture Result = 900 // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
)

// Error is a failed driver or NVRTC call.
type Error struct {
	Op   string // the entry point, with context
	Code Result
	Name string // e.g. CUDA_ERROR_OUT_OF_MEMORY
	Msg  string // the driver's description
}

func (e *Error) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("cuda: %s failed: error %d", e.Op, e.Code)
	}
	return fmt.Sprintf("cuda: %s failed: %s (%d): %s", e.Op, e.Name, e.Code, e.Msg)
}

// IsOutOfMemory reports whether err is a CUDA out-of-memory error.
func IsOutOfMemory(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == ErrOutOfMemory
}

// err builds an Error for a driver result, with the driver's name and text.
func (d *driver) err(op string, r Result) error {
	e := &Error{Op: op, Code: r}
	var name, msg up
	if d.call(d.cuGetErrorName, uintptr(r), uintptr(up(&name))) == 0 {
		e.Name = goString(name)
	}
	if d.call(d.cuGetErrorString, uintptr(r), uintptr(up(&msg))) == 0 {
		e.Msg = goString(msg)
	}
	return e
}

// check returns nil for Success and an Error otherwise.
func (d *driver) check(op string, r Result) error {
	if r == Success {
		return nil
	}
	return d.err(op, r)
}
