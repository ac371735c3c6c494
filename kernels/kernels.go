// Package kernels is the backend contract of gemmoe: device tensors, weights
// (dense or MLX affine-quantized, 2D or 3D per-expert), and the ops the Gemma 4
// forward pass is made of.
//
// The contract is shaped by a GPU. A Backend owns device memory; every op is
// enqueued on the backend's one stream and returns an error only for invalid
// arguments (shapes, dtypes, unsupported quantization), never a result. Sync
// waits for all enqueued work; Download is an explicit sync point. The CPU
// backend (kernels/cpu) may execute each op immediately.
//
// Shapes are row-major. Activations are 2D [rows, cols] (or views reshaped to
// that); an op reads the element type of each tensor from the tensor, so a GPU
// backend may keep activations in bf16 while the CPU backend keeps them in f32.
// Integer inputs (token ids, positions, expert ids) are I32 tensors that live on
// the device, so a decode step needs no host round trip.
package kernels

import (
	"fmt"
	"sort"

	"github.com/gemmoe/gemmoe/dtype"
)

// Buffer is a block of device memory owned by a backend. Its concrete type is
// private to the backend that made it.
type Buffer interface {
	// Len is the size of the buffer in bytes.
	Len() int64
}

// Tensor is a typed, shaped view into a Buffer at a byte offset. Views are
// cheap values; they do not own memory.
type Tensor struct {
	Buf    Buffer
	Offset int64 // bytes from the start of Buf
	DType  dtype.DType
	Shape  []int
}

// Numel returns the number of elements.
func (t Tensor) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Bytes returns the size of the tensor's data in bytes.
func (t Tensor) Bytes() int64 { return int64(t.Numel()) * int64(t.DType.Size()) }

// Rows returns the product of all dimensions but the last.
func (t Tensor) Rows() int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Numel() / max(t.Cols(), 1)
}

// Cols returns the last dimension (1 for a scalar).
func (t Tensor) Cols() int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[len(t.Shape)-1]
}

// IsZero reports whether t is the zero Tensor (no buffer), used for optional
// arguments such as an absent norm weight.
func (t Tensor) IsZero() bool { return t.Buf == nil }

// Reshape returns a view with the same data and a new shape of equal size.
func (t Tensor) Reshape(shape ...int) (Tensor, error) {
	n := 1
	for _, d := range shape {
		n *= d
	}
	if n != t.Numel() {
		return Tensor{}, fmt.Errorf("kernels: reshape %v to %v changes the element count", t.Shape, shape)
	}
	t.Shape = append([]int(nil), shape...)
	return t, nil
}

// RowRange returns the view of rows [from, to) of t seen as [Rows, Cols].
func (t Tensor) RowRange(from, to int) (Tensor, error) {
	rows, cols := t.Rows(), t.Cols()
	if from < 0 || to > rows || from > to {
		return Tensor{}, fmt.Errorf("kernels: rows [%d,%d) out of range for %v", from, to, t.Shape)
	}
	t.Offset += int64(from) * int64(cols) * int64(t.DType.Size())
	t.Shape = []int{to - from, cols}
	return t, nil
}

// String describes the tensor for error messages.
func (t Tensor) String() string { return fmt.Sprintf("%s%v", t.DType, t.Shape) }

// Weight is a linear layer's weight W of logical shape [Experts?, N, K] (y = x·Wᵀ):
// dense (F32, F16 or BF16 data of shape [.., N, K]) or MLX affine-quantized
// (U32 data [.., N, K·Bits/32] with Scales and Biases [.., N, K/Group]; element
// w = scale·q + bias, see DESIGN.md §5).
//
// A 3D weight (Experts > 0) holds all experts in one buffer; expert e starts at
// e·DataStride bytes from Data.Offset (and e·GroupStride from Scales/Biases
// offsets), which lets a fused tensor such as Hugging Face's gate_up_proj be
// two views without a copy. Data.Shape, Scales.Shape and Biases.Shape describe
// one expert's [N, ...] slice for a 3D weight.
type Weight struct {
	Data           Tensor
	Scales, Biases Tensor // zero for dense weights
	Bits, Group    int    // 0 for dense weights
	N, K           int    // output and input features
	Experts        int    // 0 for a 2D weight
	DataStride     int64  // bytes between experts in Data (3D only)
	GroupStride    int64  // bytes between experts in Scales and Biases (3D only)
}

// Quantized reports whether w is MLX affine-quantized.
func (w *Weight) Quantized() bool { return w.Bits != 0 }

// Expert returns the 2D weight of expert e (a view; offset computed on the host).
func (w *Weight) Expert(e int) (Weight, error) {
	if w.Experts == 0 {
		return Weight{}, fmt.Errorf("kernels: Expert(%d) on a 2D weight", e)
	}
	if e < 0 || e >= w.Experts {
		return Weight{}, fmt.Errorf("kernels: expert %d out of range [0,%d)", e, w.Experts)
	}
	v := *w
	v.Experts, v.DataStride, v.GroupStride = 0, 0, 0
	v.Data.Offset += int64(e) * w.DataStride
	if w.Quantized() {
		v.Scales.Offset += int64(e) * w.GroupStride
		v.Biases.Offset += int64(e) * w.GroupStride
	}
	return v, nil
}

// Validate checks that the weight's fields agree with each other and with the
// MLX affine format: supported bits and group, packed width, scale shapes.
func (w *Weight) Validate() error {
	if w.N <= 0 || w.K <= 0 {
		return fmt.Errorf("kernels: weight has shape [%d, %d]", w.N, w.K)
	}
	if !w.Quantized() {
		if !w.Data.DType.IsFloat() {
			return fmt.Errorf("kernels: dense weight has dtype %s (want F32, F16 or BF16)", w.Data.DType)
		}
		if w.Data.Numel() != w.N*w.K {
			return fmt.Errorf("kernels: dense weight data %v does not hold [%d, %d]", w.Data.Shape, w.N, w.K)
		}
		return nil
	}
	switch w.Bits {
	case 2, 3, 4, 5, 6, 8:
	default:
		return fmt.Errorf("kernels: %d-bit affine quantization is not supported (want 2, 3, 4, 5, 6 or 8)", w.Bits)
	}
	switch w.Group {
	case 32, 64, 128:
	default:
		return fmt.Errorf("kernels: quantization group %d is not supported (want 32, 64 or 128)", w.Group)
	}
	if w.K%w.Group != 0 {
		return fmt.Errorf("kernels: input width %d is not a multiple of the group %d", w.K, w.Group)
	}
	if w.Data.DType != dtype.U32 {
		return fmt.Errorf("kernels: quantized weight data has dtype %s (want U32)", w.Data.DType)
	}
	if w.K*w.Bits%32 != 0 {
		return fmt.Errorf("kernels: %d inputs at %d bits do not fill whole 32-bit words", w.K, w.Bits)
	}
	if w.Data.Numel() != w.N*w.K*w.Bits/32 {
		return fmt.Errorf("kernels: packed data %v does not hold [%d, %d] at %d bits", w.Data.Shape, w.N, w.K, w.Bits)
	}
	for _, t := range []Tensor{w.Scales, w.Biases} {
		if !t.DType.IsFloat() {
			return fmt.Errorf("kernels: quantization scales/biases have dtype %s (want BF16, F16 or F32)", t.DType)
		}
		if t.Numel() != w.N*(w.K/w.Group) {
			return fmt.Errorf("kernels: scales/biases %v do not hold [%d, %d] groups", t.Shape, w.N, w.K/w.Group)
		}
	}
	return nil
}

// AttentionParams describes one attention call over a KV cache.
//
// The cache holds Capacity slots of [KVHeads, HeadDim] each (K and V in
// separate tensors of shape [Capacity, KVHeads·HeadDim]); the key of position
// p sits in slot p mod Capacity. A full-attention layer's cache has room for
// every position (Capacity > the last position), a sliding layer's is a ring.
// Query row t, at position Positions[t], attends to the keys at positions
// max(0, pos-Window+1)..pos (Window 0: all of 0..pos), which must all be
// present in the cache.
type AttentionParams struct {
	Heads, KVHeads, HeadDim int
	Window                  int     // 0 for full attention
	Scale                   float32 // multiplies q·k before the softmax (1.0 for Gemma 4)
}

// Backend executes the ops of the contract. All methods are safe to call from
// one goroutine at a time; a model serializes its sessions' steps on a backend
// or uses one backend per session.
type Backend interface {
	// Name is the backend's short name ("cpu", "cuda", "metal").
	Name() string
	// ActivationDType is the element type the backend wants activations in.
	ActivationDType() dtype.DType

	// Alloc returns a new zeroed device tensor.
	Alloc(dt dtype.DType, shape ...int) (Tensor, error)
	// Free releases a tensor made by Alloc. Views of it become invalid.
	Free(t Tensor)
	// WrapHost makes a read-only device buffer over host bytes (a mapped
	// checkpoint file) that stay valid until Close: zero copy where the device
	// shares host memory, one upload otherwise.
	WrapHost(data []byte) (Buffer, error)
	// Upload copies host bytes into t (len(src) == t.Bytes()).
	Upload(t Tensor, src []byte) error
	// Download copies t into host bytes (len(dst) == t.Bytes()); it waits for
	// the work enqueued before it.
	Download(dst []byte, t Tensor) error
	// Sync waits until every enqueued op has finished.
	Sync() error
	// Close releases everything the backend holds.
	Close() error

	// MatMul computes y[M,N] = x[M,K]·Wᵀ (f32 accumulation).
	MatMul(y, x Tensor, w *Weight) error
	// MatMulExperts computes y[M,k,N] = x[m]·W[ids[m,j]]ᵀ for a 3D weight, with
	// ids an I32 tensor [M,k] on the device. x is [M,K] (shared by the k slots)
	// or [M·k,K] (one row per slot).
	MatMulExperts(y, x Tensor, w *Weight, ids Tensor) error
	// MoECombine computes y[M,N] = Σ_j weights[m,j]·x[m,j,:] for x [M,k,N] and
	// weights [M,k] (F32).
	MoECombine(y, x, weights Tensor) error
	// Embed gathers rows of the table ([V, N] dense or quantized) for the I32
	// ids [M] into y [M,N], dequantized, each multiplied by scale.
	Embed(y Tensor, table *Weight, ids Tensor, scale float32) error
	// RMSNorm normalizes each row of x over its last dimension in f32:
	// y = x·(mean(x²)+eps)^-½ · w (w zero: no weight). x may be y.
	RMSNorm(y, x, w Tensor, eps float32) error
	// RoPE rotates x [T, heads, D] in place: pairs (i, i+D/2) by the angle
	// Positions[t]·invFreq[i], invFreq an F32 tensor [D/2] (a zero entry leaves
	// its pair unrotated), positions an I32 tensor [T].
	RoPE(x, positions, invFreq Tensor) error
	// GeluTanhMul computes y = gelu_tanh(gate)·up elementwise.
	GeluTanhMul(y, gate, up Tensor) error
	// Add computes y = a + b elementwise.
	Add(y, a, b Tensor) error
	// Scale computes y = s·x elementwise.
	Scale(y, x Tensor, s float32) error
	// Softcap computes y = c·tanh(x/c) elementwise.
	Softcap(y, x Tensor, c float32) error
	// Softmax normalizes each row of x over its last dimension (f32 inside).
	Softmax(y, x Tensor) error
	// RouterTopK takes router logits [M,E] and writes, per row, the top k
	// experts of softmax(logits) (ties: lower index first) to ids [M,k] (I32)
	// and their probabilities, renormalized to sum 1 and multiplied by
	// perExpertScale[id] (a [E] tensor; zero: no scale), to weights [M,k] (F32).
	RouterTopK(weights, ids, logits, perExpertScale Tensor, k int) error
	// StoreKV writes rows src [T, KVHeads·HeadDim] into cache slots
	// positions[t] mod Capacity of cache [Capacity, KVHeads·HeadDim].
	StoreKV(cache, src, positions Tensor) error
	// Attention computes out [T, Heads·HeadDim] from q [T, Heads·HeadDim] and
	// the caches (see AttentionParams), softmax in f32.
	Attention(out, q, kCache, vCache, positions Tensor, p AttentionParams) error
}

// Graph is a recorded sequence of enqueued ops that can be replayed.
type Graph interface {
	// Launch enqueues one replay.
	Launch() error
	// Close releases the graph.
	Close() error
}

// Capturer is implemented by backends that can record the ops enqueued
// between BeginCapture and EndCapture into a Graph instead of running them
// (CUDA graphs). A recorded step replays the same kernels on the same
// tensors: inputs that change per step (token ids, positions) live in
// tensors written with Upload before each Launch, and Upload, Download and
// Sync are not allowed during a capture.
type Capturer interface {
	BeginCapture() error
	EndCapture() (Graph, error)
}

// Concurrent is implemented by backends that can run two sequences of ops
// at once (CUDA: a second stream; parallel branches in a captured graph).
// Side runs f, whose ops start once everything enqueued before Side has run
// and then proceed alongside the ops enqueued after Side returns; Join makes
// the ops enqueued after it wait for f's. The two sequences must not write
// what the other reads or writes. Tensors freed in between stay reserved
// until Join; Upload, Download, Sync and the end of a capture need the Join
// first, and so does the next Side.
type Concurrent interface {
	Side(f func() error) error
	Join() error
}

// MaxTopK is the most values a Selector picks from a row.
const MaxTopK = 256

// Selector is implemented by backends that pick the greatest values of a
// row where it lies, so that a decode loop that samples from the best few
// tokens reads those instead of the whole vocabulary's logits. TopK writes
// the k greatest values of each row of x [M, N] (F32), best first, into
// values [M, k] (F32), and their columns into ids [M, k] (I32); on equal
// values the lower column comes first, and NaNs come after every number.
// 1 <= k <= min(N, MaxTopK).
type Selector interface {
	TopK(values, ids, x Tensor, k int) error
}

// TopKOf returns the columns of the k greatest values of row, best first,
// as Selector.TopK orders them (on equal values the lower column first, NaNs
// after every number): the definition the backends' selections are tested
// against, computed by sorting on the host.
func TopKOf(row []float32, k int) []int {
	order := make([]int, len(row))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		va, vb := row[order[a]], row[order[b]]
		if va != va || vb != vb { // a number before a NaN
			return vb != vb && va == va
		}
		return va > vb
	})
	return order[:min(k, len(row))]
}
