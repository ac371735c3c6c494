package cuda

import (
	"fmt"
	"runtime"
)

// Device attributes (CUdevice_attribute) used by Properties.
const (
	attrMaxThreadsPerBlock     = 1
	attrMaxSharedPerBlock      = 8
	attrWarpSize               = 10
	attrClockRate              = 13
	attrMultiprocessorCount    = 16
	attrMemoryClockRate        = 36
	attrGlobalMemoryBusWidth   = 37
	attrL2CacheSize            = 38
	attrMaxThreadsPerSM        = 39
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
	attrMaxSharedPerSM         = 81
	attrMaxSharedPerBlockOptin = 97
	attrMaxRegistersPerSM      = 82
)

// Properties describes a device.
type Properties struct {
	Name              string
	Major, Minor      int   // compute capability
	SMs               int   // multiprocessors
	TotalMem          int64 // bytes
	MemoryClockKHz    int   // peak memory clock (0 if the driver does not say)
	BusWidthBits      int   // memory bus width (0 if the driver does not say)
	L2Bytes           int
	MaxSharedPerBlock int // without opt-in
	MaxSharedOptin    int // with cuFuncSetAttribute opt-in
	MaxSharedPerSM    int
	MaxThreadsPerSM   int
	ClockKHz          int
	DriverVersion     int // 1000·major + 10·minor
	Ordinal           int
}

// Arch returns the compute capability as NVRTC's real architecture name, e.g. "sm_90".
func (p Properties) Arch() string { return fmt.Sprintf("sm_%d%d", p.Major, p.Minor) }

// DRAMPeakGBs returns the theoretical DRAM bandwidth in GB/s (10⁹ bytes/s):
// 2 transfers per memory clock (double data rate) times the bus width, or 0
// if the driver does not report them.
func (p Properties) DRAMPeakGBs() float64 {
	return 2 * float64(p.MemoryClockKHz) * 1e3 * float64(p.BusWidthBits) / 8 / 1e9
}

func (p Properties) String() string {
	return fmt.Sprintf("%s (sm_%d%d, %d SMs, %.1f GiB, DRAM peak %.0f GB/s, L2 %d MiB, driver %d.%d)",
		p.Name, p.Major, p.Minor, p.SMs, float64(p.TotalMem)/(1<<30), p.DRAMPeakGBs(),
		p.L2Bytes>>20, p.DriverVersion/1000, p.DriverVersion%1000/10)
}

// DeviceCount returns the number of CUDA devices.
func DeviceCount() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var n int32
	if r := drv.call(drv.cuDeviceGetCount, uintptr(up(&n))); r != 0 {
		return 0, drv.err("cuDeviceGetCount", r)
	}
	return int(n), nil
}

// Device is a CUdevice handle.
type Device struct {
	h   int32
	ord int
}

// GetDevice returns device ordinal i.
func GetDevice(i int) (Device, error) {
	n, err := DeviceCount()
	if err != nil {
		return Device{}, err
	}
	if n == 0 {
		return Device{}, fmt.Errorf("cuda: the driver sees no CUDA device")
	}
	if i < 0 || i >= n {
		return Device{}, fmt.Errorf("cuda: device %d does not exist (%d devices)", i, n)
	}
	var h int32
	if r := drv.call(drv.cuDeviceGet, uintptr(up(&h)), uintptr(i)); r != 0 {
		return Device{}, drv.err("cuDeviceGet", r)
	}
	return Device{h: h, ord: i}, nil
}

// Ordinal returns the device's index.
func (d Device) Ordinal() int { return d.ord }

func (d Device) attr(a int) (int, error) {
	var v int32
	if r := drv.call(drv.cuDeviceGetAttribute, uintptr(up(&v)), uintptr(a), uintptr(d.h)); r != 0 {
		return 0, drv.err(fmt.Sprintf("cuDeviceGetAttribute(%d)", a), r)
	}
	return int(v), nil
}

// Properties reads the device's name, compute capability and limits.
func (d Device) Properties() (Properties, error) {
	if err := Load(); err != nil {
		return Properties{}, err
	}
	p := Properties{Ordinal: d.ord}
	var name [256]byte
	if r := drv.call(drv.cuDeviceGetName, uintptr(up(&name[0])), uintptr(len(name)), uintptr(d.h)); r != 0 {
		return p, drv.err("cuDeviceGetName", r)
	}
	p.Name = goString(up(&name[0]))
	var total uint64
	if r := drv.call(drv.cuDeviceTotalMem, uintptr(up(&total)), uintptr(d.h)); r != 0 {
		return p, drv.err("cuDeviceTotalMem", r)
	}
	p.TotalMem = int64(total)
	for _, f := range []struct {
		dst      *int
		a        int
		optional bool
	}{
		{&p.Major, attrComputeCapabilityMajor, false},
		{&p.Minor, attrComputeCapabilityMinor, false},
		{&p.SMs, attrMultiprocessorCount, false},
		{&p.MaxSharedPerBlock, attrMaxSharedPerBlock, false},
		{&p.MaxSharedOptin, attrMaxSharedPerBlockOptin, true},
		{&p.MaxSharedPerSM, attrMaxSharedPerSM, true},
		{&p.MaxThreadsPerSM, attrMaxThreadsPerSM, true},
		{&p.L2Bytes, attrL2CacheSize, true},
		{&p.MemoryClockKHz, attrMemoryClockRate, true},
		{&p.BusWidthBits, attrGlobalMemoryBusWidth, true},
		{&p.ClockKHz, attrClockRate, true},
	} {
		v, err := d.attr(f.a)
		if err != nil && !f.optional {
			return p, err
		}
		*f.dst = v
	}
	if p.MaxSharedOptin < p.MaxSharedPerBlock {
		p.MaxSharedOptin = p.MaxSharedPerBlock
	}
	p.DriverVersion, _ = DriverVersion()
	return p, nil
}

// Context is a device's primary context. See the package documentation for
// how it is bound to threads.
type Context struct {
	dev    Device
	h      uintptr
	closed bool
}

// NewContext retains the device's primary context.
func NewContext(dev Device) (*Context, error) {
	if err := Load(); err != nil {
		return nil, err
	}
	c := &Context{dev: dev}
	if r := drv.call(drv.cuDevicePrimaryCtxRetain, uintptr(up(&c.h)), uintptr(dev.h)); r != 0 {
		return nil, drv.err("cuDevicePrimaryCtxRetain", r)
	}
	return c, nil
}

// Device returns the context's device.
func (c *Context) Device() Device { return c.dev }

// Bind locks the calling goroutine to its OS thread and makes c current on
// that thread. Every Bind must be paired with Unbind; pairs may nest.
func (c *Context) Bind() error {
	runtime.LockOSThread()
	if c.closed {
		runtime.UnlockOSThread()
		return fmt.Errorf("cuda: context is closed")
	}
	if r := drv.call(drv.cuCtxSetCurrent, c.h); r != 0 {
		runtime.UnlockOSThread()
		return drv.err("cuCtxSetCurrent", r)
	}
	return nil
}

// Unbind undoes one Bind (the context stays current on the thread, which is
// harmless: the next Bind on any thread sets it again).
func (c *Context) Unbind() { runtime.UnlockOSThread() }

// Close releases the primary context. Everything made in it must have been
// freed first.
func (c *Context) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return drv.check("cuDevicePrimaryCtxRelease", drv.call(drv.cuDevicePrimaryCtxRelease, uintptr(c.dev.h)))
}

// MemInfo returns the free and total device memory of the current context.
func MemInfo() (free, total int64, err error) {
	var f, t uint64
	if r := drv.call(drv.cuMemGetInfo, uintptr(up(&f)), uintptr(up(&t))); r != 0 {
		return 0, 0, drv.err("cuMemGetInfo", r)
	}
	return int64(f), int64(t), nil
}
