//go:build darwin

package metal

import (
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/ebitengine/purego/objc"
)

// Metal and Foundation constants (values from the SDK headers).
const (
	mtlResourceStorageModeShared = 0
	mtlDataTypeInt               = 29
	mtlCommandBufferStatusError  = 5
	mtlGPUFamilyApple7           = 1007 // M1 and later
	mtlLanguageVersion3_1        = 3<<16 | 1
)

// mtlSize is MTLSize.
type mtlSize struct {
	Width, Height, Depth uint
}

var (
	selOnce sync.Once
	sel     struct {
		new, release, retain, drain, utf8String, stringWithUTF8String, localizedDescription objc.SEL
		name, hasUnifiedMemory, supportsFamily, maxBufferLength, newCommandQueue            objc.SEL
		newBufferWithLength, newBufferWithBytesNoCopy, contents                             objc.SEL
		newLibraryWithSource, newLibraryWithData, setLanguageVersion                        objc.SEL
		newFunctionWithName, newFunctionWithNameConstants, setConstantValue                 objc.SEL
		newComputePipelineState, maxTotalThreadsPerThreadgroup                              objc.SEL
		commandBuffer, computeCommandEncoder, setComputePipelineState                       objc.SEL
		setBuffer, setBytes, dispatchThreadgroups, endEncoding, commit, waitUntilCompleted  objc.SEL
		status, error                                                                       objc.SEL
	}
	cls struct {
		nsString, nsAutoreleasePool, mtlCompileOptions, mtlFunctionConstantValues objc.Class
	}
	dispatchDataCreate func(buf unsafe.Pointer, size uint, queue uintptr, destructor uintptr) uintptr
	dispatchRelease    func(obj uintptr)
)

func initObjC() {
	r := objc.RegisterName
	sel.new = r("new")
	sel.release = r("release")
	sel.retain = r("retain")
	sel.drain = r("drain")
	sel.utf8String = r("UTF8String")
	sel.stringWithUTF8String = r("stringWithUTF8String:")
	sel.localizedDescription = r("localizedDescription")
	sel.name = r("name")
	sel.hasUnifiedMemory = r("hasUnifiedMemory")
	sel.supportsFamily = r("supportsFamily:")
	sel.maxBufferLength = r("maxBufferLength")
	sel.newCommandQueue = r("newCommandQueue")
	sel.newBufferWithLength = r("newBufferWithLength:options:")
	sel.newBufferWithBytesNoCopy = r("newBufferWithBytesNoCopy:length:options:deallocator:")
	sel.contents = r("contents")
	sel.newLibraryWithSource = r("newLibraryWithSource:options:error:")
	sel.newLibraryWithData = r("newLibraryWithData:error:")
	sel.setLanguageVersion = r("setLanguageVersion:")
	sel.newFunctionWithName = r("newFunctionWithName:")
	sel.newFunctionWithNameConstants = r("newFunctionWithName:constantValues:error:")
	sel.setConstantValue = r("setConstantValue:type:atIndex:")
	sel.newComputePipelineState = r("newComputePipelineStateWithFunction:error:")
	sel.maxTotalThreadsPerThreadgroup = r("maxTotalThreadsPerThreadgroup")
	sel.commandBuffer = r("commandBuffer")
	sel.computeCommandEncoder = r("computeCommandEncoder")
	sel.setComputePipelineState = r("setComputePipelineState:")
	sel.setBuffer = r("setBuffer:offset:atIndex:")
	sel.setBytes = r("setBytes:length:atIndex:")
	sel.dispatchThreadgroups = r("dispatchThreadgroups:threadsPerThreadgroup:")
	sel.endEncoding = r("endEncoding")
	sel.commit = r("commit")
	sel.waitUntilCompleted = r("waitUntilCompleted")
	sel.status = r("status")
	sel.error = r("error")
	cls.nsString = objc.GetClass("NSString")
	cls.nsAutoreleasePool = objc.GetClass("NSAutoreleasePool")
	cls.mtlCompileOptions = objc.GetClass("MTLCompileOptions")
	cls.mtlFunctionConstantValues = objc.GetClass("MTLFunctionConstantValues")
}

// withPool runs f on a locked OS thread inside an autorelease pool.
func withPool(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pool := objc.ID(cls.nsAutoreleasePool).Send(sel.new)
	defer pool.Send(sel.drain)
	f()
}

// nsString returns an autoreleased NSString holding s.
func nsString(s string) objc.ID {
	return objc.ID(cls.nsString).Send(sel.stringWithUTF8String, s)
}

// goString returns the text of an NSString.
func goString(s objc.ID) string {
	if s == 0 {
		return ""
	}
	return objc.Send[string](s, sel.utf8String)
}

// errorText returns the localized description of an NSError.
func errorText(e objc.ID) string {
	if e == 0 {
		return "no error description"
	}
	return goString(e.Send(sel.localizedDescription))
}

// Device is a Metal GPU with its command queue, library and pipelines.
// Its methods are safe for concurrent use; work is encoded in call order.
type Device struct {
	mu      sync.Mutex
	dev     objc.ID
	queue   objc.ID
	name    string
	maxBuf  int64
	page    int64
	source  string
	libData []byte
	lib     objc.ID
	libErr  error
	pipes   map[string]*Pipeline
	cmd     objc.ID // current command buffer (retained), 0 when none
	enc     objc.ID // its compute encoder (retained)
	closed  bool
}

// Open returns the system default Metal device. It fails with an error
// wrapping ErrUnavailable unless this is an Apple Silicon Mac (a darwin/arm64
// binary, a unified-memory GPU of the Apple7 family or later).
func Open() (*Device, error) {
	if runtime.GOARCH != "arm64" {
		return nil, fmt.Errorf("%w: gemmoe's Metal backend needs Apple Silicon and a darwin/arm64 binary; this is darwin/%s (use the cpu backend)", ErrUnavailable, runtime.GOARCH)
	}
	selOnce.Do(initObjC)
	lib, err := purego.Dlopen("/System/Library/Frameworks/Metal.framework/Metal", purego.RTLD_LAZY|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("%w: loading Metal.framework: %v", ErrUnavailable, err)
	}
	// Command-line programs get a default device only with CoreGraphics loaded.
	if _, err := purego.Dlopen("/System/Library/Frameworks/CoreGraphics.framework/CoreGraphics", purego.RTLD_LAZY|purego.RTLD_GLOBAL); err != nil {
		return nil, fmt.Errorf("%w: loading CoreGraphics.framework: %v", ErrUnavailable, err)
	}
	create, err := purego.Dlsym(lib, "MTLCreateSystemDefaultDevice")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if sys, err := purego.Dlopen("/usr/lib/libSystem.B.dylib", purego.RTLD_LAZY|purego.RTLD_GLOBAL); err == nil {
		if f, err := purego.Dlsym(sys, "dispatch_data_create"); err == nil {
			purego.RegisterFunc(&dispatchDataCreate, f)
		}
		if f, err := purego.Dlsym(sys, "dispatch_release"); err == nil {
			purego.RegisterFunc(&dispatchRelease, f)
		}
	}
	var d *Device
	withPool(func() {
		r, _, _ := purego.SyscallN(create)
		if r == 0 {
			err = fmt.Errorf("%w: MTLCreateSystemDefaultDevice found no Metal device", ErrUnavailable)
			return
		}
		dev := objc.ID(r)
		name := goString(dev.Send(sel.name))
		if !objc.Send[bool](dev, sel.hasUnifiedMemory) || !objc.Send[bool](dev, sel.supportsFamily, mtlGPUFamilyApple7) {
			dev.Send(sel.release)
			err = fmt.Errorf("%w: %s is not an Apple Silicon GPU (want unified memory and the Apple7 family or later)", ErrUnavailable, name)
			return
		}
		queue := dev.Send(sel.newCommandQueue)
		if queue == 0 {
			dev.Send(sel.release)
			err = fmt.Errorf("metal: %s: newCommandQueue failed", name)
			return
		}
		d = &Device{
			dev:    dev,
			queue:  queue,
			name:   name,
			maxBuf: int64(objc.Send[uint](dev, sel.maxBufferLength)),
			page:   int64(syscall.Getpagesize()),
			pipes:  map[string]*Pipeline{},
		}
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Name returns the GPU's name, e.g. "Apple M2 Max".
func (d *Device) Name() string { return d.name }

// MaxBufferLength returns the largest buffer the device can make.
func (d *Device) MaxBufferLength() int64 { return d.maxBuf }

// SetLibrary sets the MSL source of the kernels, and optionally a precompiled
// metallib built from it (used instead of compiling the source). The library
// is built at the first Pipeline call.
func (d *Device) SetLibrary(source string, metallib []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lib != 0 {
		return fmt.Errorf("metal: the library is already built")
	}
	d.source, d.libData, d.libErr = source, metallib, nil
	return nil
}

// library builds the library at first use (d.mu held).
func (d *Device) library() (objc.ID, error) {
	if d.lib != 0 || d.libErr != nil {
		return d.lib, d.libErr
	}
	withPool(func() {
		var nserr objc.ID
		if len(d.libData) > 0 && dispatchDataCreate != nil {
			data := dispatchDataCreate(unsafe.Pointer(unsafe.SliceData(d.libData)), uint(len(d.libData)), 0, 0)
			d.lib = d.dev.Send(sel.newLibraryWithData, data, unsafe.Pointer(&nserr))
			if dispatchRelease != nil {
				dispatchRelease(data)
			}
			if d.lib == 0 {
				d.libErr = fmt.Errorf("metal: loading the precompiled metallib: %s", errorText(nserr))
			}
			return
		}
		if d.source == "" {
			d.libErr = fmt.Errorf("metal: no kernel source set (SetLibrary)")
			return
		}
		opts := objc.ID(cls.mtlCompileOptions).Send(sel.new)
		opts.Send(sel.setLanguageVersion, uint(mtlLanguageVersion3_1))
		d.lib = d.dev.Send(sel.newLibraryWithSource, nsString(d.source), opts, unsafe.Pointer(&nserr))
		opts.Send(sel.release)
		if d.lib == 0 {
			d.libErr = fmt.Errorf("metal: compiling the kernels (MSL 3.1, macOS 14 or later): %s", errorText(nserr))
		}
	})
	return d.lib, d.libErr
}

// Pipeline is a compute pipeline state: a kernel specialized by its function
// constants.
type Pipeline struct {
	id         objc.ID
	key        string
	maxThreads int
}

// Key returns the pipeline's cache key (see PipelineKey).
func (p *Pipeline) Key() string { return p.key }

// MaxThreads returns the most threads a threadgroup of this pipeline may have.
func (p *Pipeline) MaxThreads() int { return p.maxThreads }

// Pipeline returns the pipeline of kernel name specialized with consts,
// building the library and the pipeline at first use and caching it.
func (d *Device) Pipeline(name string, consts []Constant) (*Pipeline, error) {
	if err := checkConstants(name, consts); err != nil {
		return nil, err
	}
	key := PipelineKey(name, consts)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("metal: device is closed")
	}
	if p := d.pipes[key]; p != nil {
		return p, nil
	}
	lib, err := d.library()
	if err != nil {
		return nil, err
	}
	var p *Pipeline
	withPool(func() {
		var nserr objc.ID
		var fn objc.ID
		if len(consts) > 0 {
			cv := objc.ID(cls.mtlFunctionConstantValues).Send(sel.new)
			vals := make([]int32, len(consts))
			for i, c := range consts {
				vals[i] = c.Value
				cv.Send(sel.setConstantValue, unsafe.Pointer(&vals[i]), uint(mtlDataTypeInt), uint(c.Index))
			}
			fn = lib.Send(sel.newFunctionWithNameConstants, nsString(name), cv, unsafe.Pointer(&nserr))
			runtime.KeepAlive(vals)
			cv.Send(sel.release)
		} else {
			fn = lib.Send(sel.newFunctionWithName, nsString(name))
		}
		if fn == 0 {
			err = fmt.Errorf("metal: kernel %s: %s", key, errorText(nserr))
			return
		}
		nserr = 0
		pso := d.dev.Send(sel.newComputePipelineState, fn, unsafe.Pointer(&nserr))
		fn.Send(sel.release)
		if pso == 0 {
			err = fmt.Errorf("metal: pipeline %s: %s", key, errorText(nserr))
			return
		}
		p = &Pipeline{id: pso, key: key, maxThreads: int(objc.Send[uint](pso, sel.maxTotalThreadsPerThreadgroup))}
	})
	if err != nil {
		return nil, err
	}
	d.pipes[key] = p
	return p, nil
}

// Buffer is device memory shared with the host: allocated by NewBuffer, or
// host memory wrapped by WrapHost (as one or more overlapping views).
type Buffer struct {
	ids   []objc.ID
	views Views
	data  []byte
	own   []byte // page-aligned copy made by WrapHost for unaligned input
}

// Bytes returns the host view of the buffer's memory.
func (b *Buffer) Bytes() []byte { return b.data }

// Len returns the buffer's length in bytes.
func (b *Buffer) Len() int64 { return int64(len(b.data)) }

// resolve returns the Metal buffer and offset of the range [off, off+n).
func (b *Buffer) resolve(off, n int64) (objc.ID, int64, error) {
	if len(b.ids) == 1 {
		if off+n > int64(len(b.data)) {
			return 0, 0, fmt.Errorf("metal: range [%d, %d) past the end of a %d-byte buffer", off, off+n, len(b.data))
		}
		return b.ids[0], off, nil
	}
	i, rel, err := b.views.Find(off, n)
	if err != nil {
		return 0, 0, err
	}
	return b.ids[i], rel, nil
}

// NewBuffer allocates a zero-filled shared buffer of n bytes.
func (d *Device) NewBuffer(n int64) (*Buffer, error) {
	if n < 0 || n > d.maxBuf {
		return nil, fmt.Errorf("metal: cannot allocate %d bytes (the device's maximum buffer is %d)", n, d.maxBuf)
	}
	alloc := max(n, 16)
	var b *Buffer
	withPool(func() {
		id := d.dev.Send(sel.newBufferWithLength, uint(alloc), uint(mtlResourceStorageModeShared))
		if id == 0 {
			return
		}
		ptr := objc.Send[unsafe.Pointer](id, sel.contents)
		b = &Buffer{ids: []objc.ID{id}, data: unsafe.Slice((*byte)(ptr), alloc)[:n:n]}
	})
	if b == nil {
		return nil, fmt.Errorf("metal: out of memory allocating a %d-byte buffer", n)
	}
	return b, nil
}

// WrapHost makes a buffer over host memory without copying: page-aligned
// memory (a mapped file) is wrapped with newBufferWithBytesNoCopy, split into
// overlapping views when larger than the maximum buffer length; other memory
// is first copied once into page-aligned memory. data must stay valid and
// unmodified until the buffer is released.
func (d *Device) WrapHost(data []byte) (*Buffer, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("metal: cannot wrap an empty region")
	}
	b := &Buffer{data: data}
	if uintptr(unsafe.Pointer(unsafe.SliceData(data)))%uintptr(d.page) != 0 {
		mem, err := syscall.Mmap(-1, 0, int(roundUp(int64(len(data)), d.page)), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			return nil, fmt.Errorf("metal: allocating %d bytes to copy unaligned host memory: %v", len(data), err)
		}
		copy(mem, data)
		b.own = mem
		b.data = mem[:len(data)]
	}
	views, err := PlanViews(int64(len(b.data)), d.maxBuf, d.page)
	if err != nil {
		b.Release()
		return nil, err
	}
	b.views = views
	base := unsafe.Pointer(unsafe.SliceData(b.data))
	withPool(func() {
		for i := range views.Count() {
			s, n := views.View(i)
			id := d.dev.Send(sel.newBufferWithBytesNoCopy, unsafe.Add(base, s), uint(n), uint(mtlResourceStorageModeShared), uintptr(0))
			if id == 0 {
				err = fmt.Errorf("metal: newBufferWithBytesNoCopy failed for view %d ([%d, +%d) of %d bytes)", i, s, n, len(b.data))
				return
			}
			b.ids = append(b.ids, id)
		}
	})
	if err != nil {
		b.Release()
		return nil, err
	}
	return b, nil
}

// Release releases the buffer. Work already committed that uses it keeps it
// alive; memory wrapped by WrapHost must stay valid until that work is done.
func (b *Buffer) Release() {
	if b == nil {
		return
	}
	withPool(func() {
		for _, id := range b.ids {
			id.Send(sel.release)
		}
	})
	b.ids = nil
	if b.own != nil {
		_ = syscall.Munmap(b.own)
		b.own = nil
	}
	b.data = nil
}

// Dispatch encodes one dispatch of p: groups threadgroups of threads threads,
// with args bound at buffer indices 0, 1, ... It opens the step's command
// buffer and compute encoder if none is open; dispatches of one encoder run in
// order (serial dispatch type), each seeing the results of the ones before.
func (d *Device) Dispatch(p *Pipeline, groups, threads Size, args []Binding) error {
	if err := checkDispatch(p.key, groups, threads, args, p.maxThreads); err != nil {
		return err
	}
	type bound struct {
		id  objc.ID
		off int64
	}
	bs := make([]bound, len(args))
	for i, a := range args {
		if a.Buf == nil {
			continue
		}
		id, off, err := a.Buf.resolve(a.Offset, a.Len)
		if err != nil {
			return fmt.Errorf("metal: dispatch of %s, argument %d: %w", p.key, i, err)
		}
		bs[i] = bound{id, off}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("metal: device is closed")
	}
	var err error
	withPool(func() {
		if d.cmd == 0 {
			cmd := d.queue.Send(sel.commandBuffer)
			if cmd == 0 {
				err = fmt.Errorf("metal: commandBuffer failed")
				return
			}
			enc := cmd.Send(sel.computeCommandEncoder)
			if enc == 0 {
				err = fmt.Errorf("metal: computeCommandEncoder failed")
				return
			}
			d.cmd = cmd.Send(sel.retain)
			d.enc = enc.Send(sel.retain)
		}
		d.enc.Send(sel.setComputePipelineState, p.id)
		for i, a := range args {
			if a.Buf == nil {
				d.enc.Send(sel.setBytes, unsafe.Pointer(unsafe.SliceData(a.Bytes)), uint(len(a.Bytes)), uint(i))
				continue
			}
			d.enc.Send(sel.setBuffer, bs[i].id, uint(bs[i].off), uint(i))
		}
		g := mtlSize{uint(groups[0]), uint(groups[1]), uint(groups[2])}
		t := mtlSize{uint(threads[0]), uint(threads[1]), uint(threads[2])}
		d.enc.Send(sel.dispatchThreadgroups, g, t)
	})
	return err
}

// Wait ends the step: it commits the open command buffer, if any, waits for
// it to complete and reports its error.
func (d *Device) Wait() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == 0 {
		return nil
	}
	var err error
	withPool(func() {
		d.enc.Send(sel.endEncoding)
		d.cmd.Send(sel.commit)
		d.cmd.Send(sel.waitUntilCompleted)
		if objc.Send[uint](d.cmd, sel.status) == mtlCommandBufferStatusError {
			err = fmt.Errorf("metal: command buffer failed: %s", errorText(d.cmd.Send(sel.error)))
		}
		d.enc.Send(sel.release)
		d.cmd.Send(sel.release)
	})
	d.enc, d.cmd = 0, 0
	return err
}

// Close waits for pending work and releases the pipelines, the library, the
// queue and the device. Buffers are released by their owners.
func (d *Device) Close() error {
	err := d.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return err
	}
	d.closed = true
	withPool(func() {
		for _, p := range d.pipes {
			p.id.Send(sel.release)
		}
		if d.lib != 0 {
			d.lib.Send(sel.release)
		}
		d.queue.Send(sel.release)
		d.dev.Send(sel.release)
	})
	d.pipes = nil
	return err
}
