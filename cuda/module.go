package cuda

import (
	"fmt"
	"math"
	"unsafe"
)

// Module is a loaded CUmodule.
type Module struct{ h uintptr }

// LoadModule loads a cubin or NUL-terminated PTX image.
func LoadModule(image []byte) (*Module, error) {
	if len(image) == 0 {
		return nil, fmt.Errorf("cuda: empty module image")
	}
	m := &Module{}
	if r := drv.call(drv.cuModuleLoadData, uintptr(up(&m.h)), uintptr(up(&image[0]))); r != 0 {
		return nil, drv.err("cuModuleLoadData", r)
	}
	return m, nil
}

// Unload unloads the module.
func (m *Module) Unload() error {
	if m.h == 0 {
		return nil
	}
	r := drv.call(drv.cuModuleUnload, m.h)
	m.h = 0
	return drv.check("cuModuleUnload", r)
}

// Function returns the kernel named name (an extern "C" name).
func (m *Module) Function(name string) (*Function, error) {
	f := &Function{name: name}
	n := cString(name)
	if r := drv.call(drv.cuModuleGetFunction, uintptr(up(&f.h)), m.h, uintptr(up(&n[0]))); r != 0 {
		return nil, drv.err("cuModuleGetFunction("+name+")", r)
	}
	return f, nil
}

// Function is a kernel (CUfunction).
type Function struct {
	h    uintptr
	name string
}

// Name returns the kernel's name.
func (f *Function) Name() string { return f.name }

// Function attributes.
const (
	FuncMaxThreadsPerBlock  = 0
	FuncSharedSizeBytes     = 1
	FuncNumRegs             = 4
	FuncLocalSizeBytes      = 3
	FuncMaxDynamicSharedMem = 8
)

// Attribute reads a CUfunction_attribute.
func (f *Function) Attribute(a int) (int, error) {
	var v int32
	if r := drv.call(drv.cuFuncGetAttribute, uintptr(up(&v)), uintptr(a), f.h); r != 0 {
		return 0, drv.err("cuFuncGetAttribute("+f.name+")", r)
	}
	return int(v), nil
}

// SetMaxDynamicShared allows launches with up to n bytes of dynamic shared
// memory (needed above 48 KiB).
func (f *Function) SetMaxDynamicShared(n int) error {
	return drv.check("cuFuncSetAttribute("+f.name+")",
		drv.call(drv.cuFuncSetAttribute, f.h, FuncMaxDynamicSharedMem, uintptr(n)))
}

// Occupancy returns how many blocks of the given size fit on one SM.
func (f *Function) Occupancy(blockSize, dynSmem int) (int, error) {
	var n int32
	if r := drv.call(drv.cuOccupancyMaxActiveBlocksPerMultiprocessor, uintptr(up(&n)), f.h, uintptr(blockSize), uintptr(dynSmem)); r != 0 {
		return 0, drv.err("cuOccupancyMaxActiveBlocksPerMultiprocessor("+f.name+")", r)
	}
	return int(n), nil
}

// Blob appends an argument passed by value from raw bytes (a struct
// parameter laid out as the kernel declares it). The bytes are copied.
func (a *Args) Blob(b []byte) *Args {
	if a.n == maxArgs {
		a.err = fmt.Errorf("cuda: more than %d kernel arguments", maxArgs)
		return a
	}
	c := make([]byte, len(b)+8) // never empty
	copy(c, b)
	a.blobs[a.n] = c
	a.ptrs[a.n] = unsafe.Pointer(&c[0])
	a.n++
	return a
}

// Args packs kernel arguments. Each argument takes one 8-byte slot; the
// driver reads as many bytes from it as the kernel's parameter has, so 4-byte
// values sit in the low half (little-endian hosts). Reuse one Args (Reset)
// for many launches; it is not safe for concurrent use.
type Args struct {
	vals  [maxArgs]uint64
	ptrs  [maxArgs]unsafe.Pointer
	blobs [maxArgs][]byte // struct arguments (Blob)
	n     int
	err   error
}

const maxArgs = 40

// Reset empties the argument list.
func (a *Args) Reset() *Args { a.n, a.err = 0, nil; return a }

func (a *Args) push(v uint64) *Args {
	if a.n == maxArgs {
		a.err = fmt.Errorf("cuda: more than %d kernel arguments", maxArgs)
		return a
	}
	a.vals[a.n] = v
	a.ptrs[a.n] = unsafe.Pointer(&a.vals[a.n])
	a.n++
	return a
}

// Ptr appends a device pointer.
func (a *Args) Ptr(p DevicePtr) *Args { return a.push(uint64(p)) }

// I32 appends an int.
func (a *Args) I32(v int) *Args { return a.push(uint64(uint32(int32(v)))) }

// I64 appends a long long.
func (a *Args) I64(v int64) *Args { return a.push(uint64(v)) }

// F32 appends a float.
func (a *Args) F32(v float32) *Args { return a.push(uint64(math.Float32bits(v))) }

// Dim3 is a grid or block size.
type Dim3 struct{ X, Y, Z int }

// PDLSupported reports whether the driver has cuLaunchKernelEx, which
// LaunchPDL needs.
func PDLSupported() bool { return Load() == nil && drv.cuLaunchKernelEx != 0 }

// launchConfig is CUlaunchConfig; launchAttr is CUlaunchAttribute.
type launchConfig struct {
	gridX, gridY, gridZ    uint32
	blockX, blockY, blockZ uint32
	smem                   uint32
	_                      uint32
	stream                 uintptr
	attrs                  *launchAttr
	numAttrs               uint32
	_                      uint32
}

type launchAttr struct {
	id    uint32
	_     uint32
	value [64]byte
}

// attrProgrammaticSerialization is CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
const attrProgrammaticSerialization = 6

// LaunchPDL is Launch with programmatic dependent launch allowed: f may
// start while the kernel before it on s is still running, and must execute
// griddepcontrol.wait before it touches memory that kernel writes or reads
// (weights that no kernel writes may be read before). Inside a stream
// capture this records a programmatic edge.
func LaunchPDL(f *Function, grid, block Dim3, smem int, s *Stream, a *Args) error {
	if a.err != nil {
		return a.err
	}
	if drv.cuLaunchKernelEx == 0 {
		return fmt.Errorf("cuda: the driver has no cuLaunchKernelEx")
	}
	if grid.X <= 0 || grid.Y <= 0 || grid.Z <= 0 || block.X <= 0 || block.Y <= 0 || block.Z <= 0 {
		return fmt.Errorf("cuda: launch of %s with grid %v block %v", f.name, grid, block)
	}
	if grid.Y > 65535 || grid.Z > 65535 {
		return fmt.Errorf("cuda: launch of %s: grid %v exceeds 65535 in y or z", f.name, grid)
	}
	attr := &launchAttr{id: attrProgrammaticSerialization}
	attr.value[0] = 1
	cfg := &launchConfig{gridX: uint32(grid.X), gridY: uint32(grid.Y), gridZ: uint32(grid.Z),
		blockX: uint32(block.X), blockY: uint32(block.Y), blockZ: uint32(block.Z),
		smem: uint32(smem), stream: s.h, attrs: attr, numAttrs: 1}
	var params uintptr
	if a.n > 0 {
		params = uintptr(unsafe.Pointer(&a.ptrs[0]))
	}
	r := drv.call(drv.cuLaunchKernelEx, uintptr(up(cfg)), f.h, params, 0)
	keepAlive(attr)
	if r != 0 {
		return drv.err(fmt.Sprintf("cuLaunchKernelEx(%s, grid %v, block %v, smem %d)", f.name, grid, block, smem), r)
	}
	return nil
}

// Launch enqueues f on s with the arguments in a (which must have been built
// on the heap, e.g. by new(Args), so the pointers stay put during the call).
func Launch(f *Function, grid, block Dim3, smem int, s *Stream, a *Args) error {
	if a.err != nil {
		return a.err
	}
	if grid.X <= 0 || grid.Y <= 0 || grid.Z <= 0 || block.X <= 0 || block.Y <= 0 || block.Z <= 0 {
		return fmt.Errorf("cuda: launch of %s with grid %v block %v", f.name, grid, block)
	}
	if grid.Y > 65535 || grid.Z > 65535 {
		return fmt.Errorf("cuda: launch of %s: grid %v exceeds 65535 in y or z", f.name, grid)
	}
	var params uintptr
	if a.n > 0 {
		params = uintptr(unsafe.Pointer(&a.ptrs[0]))
	}
	r := drv.call(drv.cuLaunchKernel, f.h,
		uintptr(grid.X), uintptr(grid.Y), uintptr(grid.Z),
		uintptr(block.X), uintptr(block.Y), uintptr(block.Z),
		uintptr(smem), s.h, params, 0)
	if r != 0 {
		return drv.err(fmt.Sprintf("cuLaunchKernel(%s, grid %v, block %v, smem %d)", f.name, grid, block, smem), r)
	}
	return nil
}
