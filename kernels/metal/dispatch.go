package metal

import (
	"encoding/binary"
	"fmt"

	"github.com/gemmoe/gemmoe/dtype"
	mtl "github.com/gemmoe/gemmoe/metal"
)

// Dispatch describes one compute dispatch completely: the kernel, the grid,
// the threadgroup size, the buffers with their byte ranges, the inline
// argument struct and the function constants. The Backend builds these
// values; an Executor runs them (the Metal executor encodes them into the
// step's command buffer, the emulator runs them on the CPU).
type Dispatch struct {
	Kernel  string // MSL kernel function name
	Groups  [3]int // threadgroups per grid
	Threads [3]int // threads per threadgroup
	Args    []Arg  // Args[i] is bound at [[buffer(i)]]
	Consts  Consts // function constants specializing the pipeline
}

// Arg is one buffer argument of a dispatch: Len bytes of Mem from Offset
// (the whole range the kernel may touch), or inline bytes (the argument
// struct) when Mem is nil.
type Arg struct {
	Mem    Memory
	Offset int64
	Len    int64
	Write  bool   // the kernel writes the range
	Bytes  []byte // inline constant data when Mem is nil
}

// Consts are the function constants of 00_common.metal.
type Consts struct {
	Bits  int         // BITS: quantization bits, 0 for a dense weight
	Group int         // GROUP: quantization group
	X     dtype.DType // DT_X: first input
	W     dtype.DType // DT_W: second input
	Y     dtype.DType // DT_Y: output
	S     dtype.DType // DT_S: scales and biases, per-expert scale
}

// Values returns the constants in index order, as the runtime takes them.
func (c Consts) Values() []mtl.Constant {
	return []mtl.Constant{
		{Index: 0, Value: int32(c.Bits)},
		{Index: 1, Value: int32(c.Group)},
		{Index: 2, Value: int32(c.X)},
		{Index: 3, Value: int32(c.W)},
		{Index: 4, Value: int32(c.Y)},
		{Index: 5, Value: int32(c.S)},
	}
}

// PipelineKey returns the cache key of the dispatch's pipeline.
func (d *Dispatch) PipelineKey() string { return mtl.PipelineKey(d.Kernel, d.Consts.Values()) }

// String describes the dispatch for errors and logs.
func (d *Dispatch) String() string {
	return fmt.Sprintf("%s grid %v×%v", d.PipelineKey(), d.Groups, d.Threads)
}

// Memory is a block of device memory made by an Executor, visible to the
// host through Bytes (shared memory on Apple Silicon, a shared file mapping
// in the emulator).
type Memory interface {
	Bytes() []byte
	Len() int64
}

// Executor runs dispatches: the Metal executor on a Mac, the emulator on any
// machine with g++.
type Executor interface {
	// Name is "metal" or "metal-emulated".
	Name() string
	// Alloc returns n zeroed bytes of device memory.
	Alloc(n int64) (Memory, error)
	// Wrap makes device memory over host bytes that stay valid until Close:
	// without a copy where possible.
	Wrap(data []byte) (Memory, error)
	// Free releases memory made by Alloc or Wrap.
	Free(m Memory)
	// Run enqueues a dispatch after the ones before it.
	Run(d *Dispatch) error
	// Sync waits for every enqueued dispatch and reports an execution error.
	Sync() error
	// Close releases the executor.
	Close() error
}

// The argument structs, field for field the MSL structs of the same name
// (tests check the layouts against the source). Only 4-byte fields: no padding.

type qmvParams struct {
	N, K, Slots, XShared, Experts int32
	WStride, SStride              uint32
}

type qmmParams struct {
	M, N, K int32
}

type embedParams struct {
	Vocab, K, M int32
	Scale       float32
}

type combineParams struct {
	M, N, Slots int32
}

type eltParams struct {
	N uint32
	S float32
}

type rowParams struct {
	N         int32
	Eps       float32
	HasWeight int32
}

type ropeParams struct {
	Rows, Heads, HalfDim int32
}

type storeParams struct {
	Rows, Cols, Capacity int32
}

type attnParams struct {
	Heads, KVHeads, HeadDim, Window int32
	Scale                           float32
	Capacity                        int32
}

type routerParams struct {
	Experts, K, HasScale int32
}

type topKParams struct {
	N, K, Values int32
}

// paramStructs maps MSL struct names to their Go mirrors.
var paramStructs = map[string]any{
	"QMVParams":     qmvParams{},
	"QMMParams":     qmmParams{},
	"EmbedParams":   embedParams{},
	"CombineParams": combineParams{},
	"EltParams":     eltParams{},
	"RowParams":     rowParams{},
	"RopeParams":    ropeParams{},
	"StoreParams":   storeParams{},
	"AttnParams":    attnParams{},
	"RouterParams":  routerParams{},
	"TopKParams":    topKParams{},
}

// inline returns the inline argument holding the little-endian bytes of the
// argument struct v. Only the fixed-size structs above are encoded; were
// encoding to fail, the empty argument would be rejected by the executor.
func inline(v any) Arg {
	b, _ := binary.Append(nil, binary.LittleEndian, v)
	return Arg{Bytes: b}
}
