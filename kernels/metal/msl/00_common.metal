// gemmoe Metal kernels: shared definitions.
//
// The files of this directory are concatenated in name order into one source
// that Metal compiles with newLibraryWithSource (and that the Linux tests
// compile as C++17 against a shim header, see ../emu). Conventions:
//
//   - Activations, weights and caches are passed as raw byte pointers and read
//     through ld()/st() with an element type code; the codes are function
//     constants, so each pipeline is specialized for its dtypes and the switch
//     folds away. Arithmetic is f32.
//   - Threadgroup memory is declared only as arrays at kernel scope (never
//     passed by pointer), so the emulator can give it static storage.
//   - SIMD-group collectives and barriers are reached by every thread of the
//     SIMD-group / threadgroup (no early return before them).

#include <metal_stdlib>
using namespace metal;

// Element type codes: the numeric values of gemmoe's dtype.DType.
enum DTypeCode : int {
    DT_F32 = 1,
    DT_F16 = 2,
    DT_BF16 = 3,
    DT_U32 = 4,
    DT_I32 = 5,
};

// Function constants that specialize a pipeline. Every dispatch sets all of
// them (0 where unused).
constant int BITS [[function_constant(0)]];   // quantization bits (0: dense weight)
constant int GROUP [[function_constant(1)]];  // quantization group size
constant int DT_X [[function_constant(2)]];   // first input (activations)
constant int DT_W [[function_constant(3)]];   // second input (dense weight, b, up, norm weight, KV cache)
constant int DT_Y [[function_constant(4)]];   // output
constant int DT_S [[function_constant(5)]];   // quantization scales/biases, per-expert scale

// ld reads element i of an array of element type dt as f32.
inline float ld(device const uchar* p, int dt, ulong i) {
    switch (dt) {
    case DT_F16:
        return float(((device const half*)p)[i]);
    case DT_BF16:
        return float(((device const bfloat*)p)[i]);
    default:
        return ((device const float*)p)[i];
    }
}

// st writes v to element i of an array of element type dt (round to nearest even).
inline void st(device uchar* p, int dt, ulong i, float v) {
    switch (dt) {
    case DT_F16:
        ((device half*)p)[i] = half(v);
        break;
    case DT_BF16:
        ((device bfloat*)p)[i] = bfloat(v);
        break;
    default:
        ((device float*)p)[i] = v;
        break;
    }
}

// dt_size is the size in bytes of one element of type dt.
inline ulong dt_size(int dt) {
    return dt == DT_F16 || dt == DT_BF16 ? 2 : 4;
}

// qextract returns the quantized value at element index e of a row's bit
// stream (MLX affine layout: element e occupies bits [e*bits, (e+1)*bits),
// stream bit n is bit n%8 of byte n/8). It reads the second byte only when the
// value straddles it.
inline uint qextract(device const uchar* row, uint e, int bits) {
    uint bit = e * uint(bits);
    uint byte = bit >> 3;
    uint sh = bit & 7;
    uint v = uint(row[byte]) >> sh;
    if (sh + uint(bits) > 8) {
        v |= uint(row[byte + 1]) << (8 - sh);
    }
    return v & ((1u << bits) - 1u);
}

// dequant returns element e of row `row` of a weight: dense (DT_W) or MLX
// affine-quantized (BITS, GROUP, scales/biases of type DT_S).
inline float dequant(device const uchar* w, device const uchar* scales, device const uchar* biases,
                     ulong row, uint e, uint k) {
    if (BITS == 0) {
        return ld(w, DT_W, row * k + e);
    }
    device const uchar* wr = w + row * (ulong(k) * ulong(BITS) / 8);
    ulong g = row * (k / uint(GROUP)) + e / uint(GROUP);
    return ld(scales, DT_S, g) * float(qextract(wr, e, BITS)) + ld(biases, DT_S, g);
}

// gelu_tanh is 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
inline float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.0f + precise::tanh(c * (x + 0.044715f * x * x * x)));
}
