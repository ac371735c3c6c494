package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// ErrNotLinux is returned by every entry point on operating systems other
// than linux.
var ErrNotLinux = errors.New("cuda: CUDA is only supported on linux")

// Libraries tells where the shared libraries were loaded from.
type Libraries struct {
	Driver string // path of libcuda
	NVRTC  string // path of libnvrtc; empty if it could not be loaded
}

// driver holds the entry points of libcuda and libnvrtc.
type driver struct {
	libs     Libraries
	nvrtcErr error // why NVRTC is unavailable, if it is

	cuInit, cuDriverGetVersion, cuGetErrorName, cuGetErrorString                   uintptr
	cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute           uintptr
	cuDeviceTotalMem                                                               uintptr
	cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRelease                            uintptr
	cuCtxSetCurrent, cuCtxGetCurrent                                               uintptr
	cuMemAlloc, cuMemFree, cuMemGetInfo, cuMemHostAlloc, cuMemFreeHost             uintptr
	cuMemHostRegister, cuMemHostUnregister                                         uintptr
	cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync                        uintptr
	cuMemsetD8Async, cuMemsetD32Async                                              uintptr
	cuStreamCreate, cuStreamDestroy, cuStreamSynchronize, cuStreamQuery            uintptr
	cuEventCreate, cuEventDestroy, cuEventRecord, cuEventSynchronize, cuEventQuery uintptr
	cuEventElapsedTime, cuStreamWaitEvent                                          uintptr
	cuModuleLoadData, cuModuleUnload, cuModuleGetFunction                          uintptr
	cuFuncSetAttribute, cuFuncGetAttribute, cuLaunchKernel                         uintptr
	cuOccupancyMaxActiveBlocksPerMultiprocessor                                    uintptr
	cuStreamBeginCapture, cuStreamEndCapture, cuStreamIsCapturing                  uintptr
	cuGraphInstantiateWithFlags, cuGraphLaunch, cuGraphExecDestroy, cuGraphDestroy uintptr
	cuLaunchKernelEx                                                               uintptr // optional (CUDA 12+)

	nvrtcVersion, nvrtcCreateProgram, nvrtcCompileProgram, nvrtcDestroyProgram   uintptr
	nvrtcGetProgramLogSize, nvrtcGetProgramLog, nvrtcGetCUBINSize, nvrtcGetCUBIN uintptr
	nvrtcGetPTXSize, nvrtcGetPTX, nvrtcGetErrorString                            uintptr
}

type symbol struct {
	dst   *uintptr
	names []string // tried in order
}

func bindAll(lib string, sym func(string) uintptr, syms []symbol) error {
	var missing []string
	for _, s := range syms {
		for _, n := range s.names {
			if p := sym(n); p != 0 {
				*s.dst = p
				break
			}
		}
		if *s.dst == 0 {
			missing = append(missing, s.names[0])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cuda: %s lacks %v (driver or toolkit too old?)", lib, missing)
	}
	return nil
}

func (d *driver) bindDriver(sym func(string) uintptr) error {
	n := func(p *uintptr, names ...string) symbol { return symbol{p, names} }
	d.cuLaunchKernelEx = sym("cuLaunchKernelEx")
	return bindAll(d.libs.Driver, sym, []symbol{
		n(&d.cuInit, "cuInit"),
		n(&d.cuDriverGetVersion, "cuDriverGetVersion"),
		n(&d.cuGetErrorName, "cuGetErrorName"),
		n(&d.cuGetErrorString, "cuGetErrorString"),
		n(&d.cuDeviceGetCount, "cuDeviceGetCount"),
		n(&d.cuDeviceGet, "cuDeviceGet"),
		n(&d.cuDeviceGetName, "cuDeviceGetName"),
		n(&d.cuDeviceGetAttribute, "cuDeviceGetAttribute"),
		n(&d.cuDeviceTotalMem, "cuDeviceTotalMem_v2"),
		n(&d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
		n(&d.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"),
		n(&d.cuCtxSetCurrent, "cuCtxSetCurrent"),
		n(&d.cuCtxGetCurrent, "cuCtxGetCurrent"),
		n(&d.cuMemAlloc, "cuMemAlloc_v2"),
		n(&d.cuMemFree, "cuMemFree_v2"),
		n(&d.cuMemGetInfo, "cuMemGetInfo_v2"),
		n(&d.cuMemHostAlloc, "cuMemHostAlloc"),
		n(&d.cuMemFreeHost, "cuMemFreeHost"),
		n(&d.cuMemHostRegister, "cuMemHostRegister_v2", "cuMemHostRegister"),
		n(&d.cuMemHostUnregister, "cuMemHostUnregister"),
		n(&d.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
		n(&d.cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"),
		n(&d.cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"),
		n(&d.cuMemsetD8Async, "cuMemsetD8Async"),
		n(&d.cuMemsetD32Async, "cuMemsetD32Async"),
		n(&d.cuStreamCreate, "cuStreamCreate"),
		n(&d.cuStreamDestroy, "cuStreamDestroy_v2", "cuStreamDestroy"),
		n(&d.cuStreamSynchronize, "cuStreamSynchronize"),
		n(&d.cuStreamQuery, "cuStreamQuery"),
		n(&d.cuStreamWaitEvent, "cuStreamWaitEvent"),
		n(&d.cuEventCreate, "cuEventCreate"),
		n(&d.cuEventDestroy, "cuEventDestroy_v2", "cuEventDestroy"),
		n(&d.cuEventRecord, "cuEventRecord"),
		n(&d.cuEventSynchronize, "cuEventSynchronize"),
		n(&d.cuEventQuery, "cuEventQuery"),
		n(&d.cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime"),
		n(&d.cuModuleLoadData, "cuModuleLoadData"),
		n(&d.cuModuleUnload, "cuModuleUnload"),
		n(&d.cuModuleGetFunction, "cuModuleGetFunction"),
		n(&d.cuFuncSetAttribute, "cuFuncSetAttribute"),
		n(&d.cuFuncGetAttribute, "cuFuncGetAttribute"),
		n(&d.cuLaunchKernel, "cuLaunchKernel"),
		n(&d.cuOccupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor"),
		n(&d.cuStreamBeginCapture, "cuStreamBeginCapture_v2"),
		n(&d.cuStreamEndCapture, "cuStreamEndCapture"),
		n(&d.cuStreamIsCapturing, "cuStreamIsCapturing"),
		n(&d.cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags"),
		n(&d.cuGraphLaunch, "cuGraphLaunch"),
		n(&d.cuGraphExecDestroy, "cuGraphExecDestroy"),
		n(&d.cuGraphDestroy, "cuGraphDestroy"),
	})
}

func (d *driver) bindNVRTC(sym func(string) uintptr) error {
	n := func(p *uintptr, names ...string) symbol { return symbol{p, names} }
	return bindAll(d.libs.NVRTC, sym, []symbol{
		n(&d.nvrtcVersion, "nvrtcVersion"),
		n(&d.nvrtcCreateProgram, "nvrtcCreateProgram"),
		n(&d.nvrtcCompileProgram, "nvrtcCompileProgram"),
		n(&d.nvrtcDestroyProgram, "nvrtcDestroyProgram"),
		n(&d.nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize"),
		n(&d.nvrtcGetProgramLog, "nvrtcGetProgramLog"),
		n(&d.nvrtcGetCUBINSize, "nvrtcGetCUBINSize"),
		n(&d.nvrtcGetCUBIN, "nvrtcGetCUBIN"),
		n(&d.nvrtcGetPTXSize, "nvrtcGetPTXSize"),
		n(&d.nvrtcGetPTX, "nvrtcGetPTX"),
		n(&d.nvrtcGetErrorString, "nvrtcGetErrorString"),
	})
}

var (
	loadOnce sync.Once
	drv      *driver
	loadErr  error
)

// Load loads libcuda and libnvrtc and calls cuInit, once per process. Every
// other function calls it; call it directly to learn early whether CUDA is
// usable. A missing NVRTC is not an error here (see NVRTCAvailable).
func Load() error {
	loadOnce.Do(func() {
		d, err := openLibraries()
		if err != nil {
			loadErr = err
			return
		}
		if r := d.call(d.cuInit, 0); r != 0 {
			loadErr = d.err("cuInit (no usable NVIDIA GPU or driver?)", r)
			return
		}
		drv = d
	})
	return loadErr
}

// LoadedLibraries reports the files the driver and NVRTC came from.
func LoadedLibraries() (Libraries, error) {
	if err := Load(); err != nil {
		return Libraries{}, err
	}
	return drv.libs, nil
}

// NVRTCAvailable reports nil if NVRTC was loaded, else why not.
func NVRTCAvailable() error {
	if err := Load(); err != nil {
		return err
	}
	return drv.nvrtcErr
}

// call calls a driver entry point and returns its CUresult.
//
//go:uintptrescapes
func (d *driver) call(fn uintptr, args ...uintptr) Result {
	r, _, _ := purego.SyscallN(fn, args...)
	return Result(int32(uint32(r)))
}

// up shortens unsafe.Pointer in argument lists. Pointer arguments are always
// written uintptr(up(&x)) directly in the argument list of call, whose
// go:uintptrescapes keeps the object alive and in place during the call.
type up = unsafe.Pointer

// cString copies s into a NUL-terminated byte slice.
func cString(s string) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}

// goString copies the NUL-terminated C string at p.
func goString(p unsafe.Pointer) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(p), n))
}

// DriverVersion returns the CUDA version the driver supports, as
// 1000·major + 10·minor (13000 for CUDA 13.0).
func DriverVersion() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var v int32
	if r := drv.call(drv.cuDriverGetVersion, uintptr(up(&v))); r != 0 {
		return 0, drv.err("cuDriverGetVersion", r)
	}
	return int(v), nil
}
