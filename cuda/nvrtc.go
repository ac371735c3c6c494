package cuda

import (
	"fmt"
	"strings"
	"unsafe"
)

// NVRTCVersion returns NVRTC's major and minor version.
func NVRTCVersion() (major, minor int, err error) {
	if err := NVRTCAvailable(); err != nil {
		return 0, 0, err
	}
	var ma, mi int32
	if r := drv.call(drv.nvrtcVersion, uintptr(up(&ma)), uintptr(up(&mi))); r != 0 {
		return 0, 0, drv.nvrtcErr2("nvrtcVersion", r)
	}
	return int(ma), int(mi), nil
}

func (d *driver) nvrtcErr2(op string, r Result) error {
	e := &Error{Op: op, Code: r}
	if d.nvrtcGetErrorString != 0 {
		p, _, _ := puregoCall(d.nvrtcGetErrorString, uintptr(r))
		e.Name = goString(*(*unsafe.Pointer)(unsafe.Pointer(&p)))
	}
	return e
}

// CompileError is a failed NVRTC compilation with the compiler's log.
type CompileError struct {
	Name string
	Log  string
	Err  error
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("cuda: NVRTC could not compile %s: %v\n%s", e.Name, e.Err, strings.TrimSpace(e.Log))
}

func (e *CompileError) Unwrap() error { return e.Err }

// Compile compiles CUDA C++ source with NVRTC. For a real architecture
// option (--gpu-architecture=sm_XY) it returns a cubin, for a virtual one
// (compute_XY) NUL-terminated PTX. The log holds warnings even on success.
func Compile(src, name string, opts []string) (image []byte, log string, err error) {
	if err := NVRTCAvailable(); err != nil {
		return nil, "", err
	}
	csrc, cname := cString(src), cString(name)
	var prog uintptr
	if r := drv.call(drv.nvrtcCreateProgram, uintptr(up(&prog)), uintptr(up(&csrc[0])), uintptr(up(&cname[0])), 0, 0, 0); r != 0 {
		return nil, "", drv.nvrtcErr2("nvrtcCreateProgram", r)
	}
	defer func() { drv.call(drv.nvrtcDestroyProgram, uintptr(up(&prog))) }()

	// The option strings and the array of pointers to them live in Go memory
	// that stays reachable (and unmoved: heap) until the call returns.
	copts := make([][]byte, len(opts))
	optPtrs := make([]unsafe.Pointer, len(opts)+1)
	for i, o := range opts {
		copts[i] = cString(o)
		optPtrs[i] = unsafe.Pointer(&copts[i][0])
	}
	rc := drv.call(drv.nvrtcCompileProgram, prog, uintptr(len(opts)), uintptr(up(&optPtrs[0])))
	keepAlive(copts)

	var logSize uintptr
	if drv.call(drv.nvrtcGetProgramLogSize, prog, uintptr(up(&logSize))) == 0 && logSize > 1 {
		b := make([]byte, logSize)
		if drv.call(drv.nvrtcGetProgramLog, prog, uintptr(up(&b[0]))) == 0 {
			log = string(b[:logSize-1])
		}
	}
	if rc != 0 {
		return nil, log, &CompileError{Name: name, Log: log, Err: drv.nvrtcErr2("nvrtcCompileProgram", rc)}
	}

	real := false
	for _, o := range opts {
		if strings.Contains(o, "sm_") {
			real = true
		}
	}
	sizeFn, getFn, what := drv.nvrtcGetPTXSize, drv.nvrtcGetPTX, "PTX"
	if real {
		sizeFn, getFn, what = drv.nvrtcGetCUBINSize, drv.nvrtcGetCUBIN, "CUBIN"
	}
	var size uintptr
	if r := drv.call(sizeFn, prog, uintptr(up(&size))); r != 0 {
		return nil, log, drv.nvrtcErr2("nvrtcGet"+what+"Size", r)
	}
	if size == 0 {
		return nil, log, fmt.Errorf("cuda: NVRTC produced an empty %s for %s", what, name)
	}
	image = make([]byte, size)
	if r := drv.call(getFn, prog, uintptr(up(&image[0]))); r != 0 {
		return nil, log, drv.nvrtcErr2("nvrtcGet"+what, r)
	}
	return image, log, nil
}
