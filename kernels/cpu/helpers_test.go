package cpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/kernels"
)

// Test helpers: host-side encoding of values, and references written
// independently of the backend (straight loops in float64 over values
// decoded bit by bit).

// encode returns the bytes of vals in dtype dt (F32, BF16, F16, I32 or U32).
func encode(dt dtype.DType, vals []float64) []byte {
	out := make([]byte, len(vals)*dt.Size())
	for i, v := range vals {
		switch dt {
		case dtype.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(v)))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(out[2*i:], dtype.F32ToBF16(float32(v)))
		case dtype.F16:
			binary.LittleEndian.PutUint16(out[2*i:], dtype.F32ToF16(float32(v)))
		case dtype.I32:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(int32(v)))
		case dtype.U32:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(v))
		default:
			panic("encode: dtype " + dt.String())
		}
	}
	return out
}

// decode is the inverse of encode for float dtypes.
func decode(dt dtype.DType, raw []byte) []float64 {
	out := make([]float64, len(raw)/dt.Size())
	for i := range out {
		switch dt {
		case dtype.F32:
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		case dtype.BF16:
			out[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(raw[2*i:])) << 16))
		case dtype.F16:
			out[i] = float64(dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:])))
		case dtype.I32:
			out[i] = float64(int32(binary.LittleEndian.Uint32(raw[4*i:])))
		default:
			panic("decode: dtype " + dt.String())
		}
	}
	return out
}

// rounded returns vals as stored in dt (so references see the same inputs).
func rounded(dt dtype.DType, vals []float64) []float64 { return decode(dt, encode(dt, vals)) }

// tensor allocates a tensor on b and uploads vals (encoded in dt).
func tensor(t testing.TB, b *Backend, dt dtype.DType, vals []float64, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := b.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if vals != nil {
		if err := b.Upload(x, encode(dt, vals)); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// rawTensor allocates a tensor and uploads raw bytes.
func rawTensor(t testing.TB, b *Backend, dt dtype.DType, raw []byte, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := b.Alloc(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(x, raw); err != nil {
		t.Fatal(err)
	}
	return x
}

// fetch downloads a float or I32 tensor as float64 values.
func fetch(t testing.TB, b *Backend, x kernels.Tensor) []float64 {
	t.Helper()
	raw := make([]byte, x.Bytes())
	if err := b.Download(raw, x); err != nil {
		t.Fatal(err)
	}
	return decode(x.DType, raw)
}

func randVals(r *rand.Rand, n int, lo, hi float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float64()
	}
	return v
}

func randNorm(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	return v
}

// refQ returns element i of a packed row read as a little-endian bit stream:
// bit b of the value is stream bit i·bits+b, which is bit n%32 of word n/32.
func refQ(words []uint32, bits, i int) int {
	q := 0
	for b := range bits {
		n := i*bits + b
		if words[n/32]>>(n%32)&1 != 0 {
			q |= 1 << b
		}
	}
	return q
}

// refPack packs values (each < 2^bits) into a row of words, bit by bit.
func refPack(q []int, bits int) []uint32 {
	words := make([]uint32, len(q)*bits/32)
	for i, v := range q {
		for b := range bits {
			if v>>b&1 != 0 {
				n := i*bits + b
				words[n/32] |= 1 << (n % 32)
			}
		}
	}
	return words
}

// qmat is a random quantized matrix [N, K] (one expert) held on the host.
type qmat struct {
	n, k, bits, group int
	words             []uint32  // [N, K·bits/32]
	scales, biases    []float64 // [N, K/group], already rounded to sdt
}

func randQMat(r *rand.Rand, n, k, bits, group int, sdt dtype.DType) *qmat {
	m := &qmat{n: n, k: k, bits: bits, group: group}
	m.words = make([]uint32, n*k*bits/32)
	for i := range m.words {
		m.words[i] = r.Uint32()
	}
	g := n * (k / group)
	m.scales = rounded(sdt, randVals(r, g, -0.02, 0.02))
	m.biases = rounded(sdt, randVals(r, g, -0.1, 0.1))
	return m
}

// dense returns the dequantized matrix w = scale·q + bias in float64.
func (m *qmat) dense() []float64 {
	w := make([]float64, m.n*m.k)
	wpr := m.k * m.bits / 32
	gpr := m.k / m.group
	for r := range m.n {
		row := m.words[r*wpr : (r+1)*wpr]
		for i := range m.k {
			g := r*gpr + i/m.group
			w[r*m.k+i] = m.scales[g]*float64(refQ(row, m.bits, i)) + m.biases[g]
		}
	}
	return w
}

// absDense returns |scale·q| + |bias| per element (for error bounds).
func (m *qmat) absDense() []float64 {
	w := make([]float64, m.n*m.k)
	wpr := m.k * m.bits / 32
	gpr := m.k / m.group
	for r := range m.n {
		row := m.words[r*wpr : (r+1)*wpr]
		for i := range m.k {
			g := r*gpr + i/m.group
			w[r*m.k+i] = math.Abs(m.scales[g]*float64(refQ(row, m.bits, i))) + math.Abs(m.biases[g])
		}
	}
	return w
}

func wordsBytes(w []uint32) []byte {
	out := make([]byte, 4*len(w))
	for i, v := range w {
		binary.LittleEndian.PutUint32(out[4*i:], v)
	}
	return out
}

// upload puts the matrix on b as a 2D Weight.
func (m *qmat) upload(t testing.TB, b *Backend, sdt dtype.DType) *kernels.Weight {
	t.Helper()
	return &kernels.Weight{
		Data:   rawTensor(t, b, dtype.U32, wordsBytes(m.words), m.n, m.k*m.bits/32),
		Scales: tensor(t, b, sdt, m.scales, m.n, m.k/m.group),
		Biases: tensor(t, b, sdt, m.biases, m.n, m.k/m.group),
		Bits:   m.bits, Group: m.group, N: m.n, K: m.k,
	}
}

// refMatMul returns y[m,n] = Σ_i x[m,i]·w[n,i] and the bound Σ|x|·|w|.
func refMatMul(x, w, absw []float64, m, n, k int) (y, mag []float64) {
	y, mag = make([]float64, m*n), make([]float64, m*n)
	for r := range m {
		xr := x[r*k : (r+1)*k]
		for c := range n {
			wr := w[c*k : (c+1)*k]
			var s, a float64
			for i := range k {
				s += xr[i] * wr[i]
				if absw != nil {
					a += math.Abs(xr[i]) * absw[c*k+i]
				} else {
					a += math.Abs(xr[i] * wr[i])
				}
			}
			y[r*n+c], mag[r*n+c] = s, a
		}
	}
	return y, mag
}

// within reports the first index where |got-want| > rel·mag + abs.
func within(t testing.TB, what string, got, want, mag []float64, rel, abs float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		tol := abs
		if mag != nil {
			tol += rel * mag[i]
		} else {
			tol += rel * math.Abs(want[i])
		}
		if !(math.Abs(got[i]-want[i]) <= tol) {
			t.Fatalf("%s: element %d = %v, want %v (|Δ| %.3g > tol %.3g)", what, i, got[i], want[i], math.Abs(got[i]-want[i]), tol)
		}
	}
}

func newBackend(t testing.TB, opts ...Option) *Backend {
	b := New(opts...)
	t.Cleanup(func() { b.Close() })
	return b
}
