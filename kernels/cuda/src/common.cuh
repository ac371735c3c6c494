// common.cuh: helpers shared by all gemmoe CUDA kernels. No toolkit headers
// are used (NVRTC has none built in): bf16 and f16 are handled as raw 16-bit
// patterns.
//
// Element types are passed at run time as gemmoe dtype codes (dtype.DType):
// 1 = F32, 2 = F16, 3 = BF16, 5 = I32. A branch on a kernel-uniform value
// costs next to nothing next to the memory traffic of these kernels.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef long long i64;

#define DT_F32 1
#define DT_F16 2
#define DT_BF16 3

#define NEG_INF __int_as_float(0xff800000)

// Dynamic shared memory of every kernel that takes some.
extern __shared__ __align__(16) float dyn_smem[];

__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                      // round to nearest even
    return (u16)(u >> 16);
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

// ldf loads element i of a float tensor of type dt as f32.
__device__ __forceinline__ float ldf(const void* p, i64 i, int dt) {
    if (dt == DT_BF16) return bf2f(((const u16*)p)[i]);
    if (dt == DT_F32) return ((const float*)p)[i];
    return h2f(((const u16*)p)[i]);
}

// stf stores f32 v as element i of a float tensor of type dt.
__device__ __forceinline__ void stf(void* p, i64 i, int dt, float v) {
    if (dt == DT_BF16) ((u16*)p)[i] = f2bf(v);
    else if (dt == DT_F32) ((float*)p)[i] = v;
    else ((u16*)p)[i] = f2h(v);
}

// round_act rounds v to what a tensor of type dt can hold (used where a
// kernel keeps an intermediate in registers that a reference would store).
__device__ __forceinline__ float round_act(float v, int dt) {
    if (dt == DT_BF16) return bf2f(f2bf(v));
    if (dt == DT_F16) return h2f(f2h(v));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// block_sum reduces over the block (blockDim.x a multiple of 32, at most
// 1024); every thread gets the result. red must hold 32 floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : NEG_INF;
    return warp_max(v);
}

// qval returns element k of a packed MLX affine row (bit stream of b-bit
// values, little-endian words).
__device__ __forceinline__ u32 qval(const u32* row, int k, int bits) {
    u32 bit = (u32)k * (u32)bits;
    u32 wi = bit >> 5, off = bit & 31;
    u32 v = row[wi] >> off;
    if (off + bits > 32) v |= row[wi + 1] << (32 - off);
    return v & ((1u << bits) - 1u);
}

__device__ __forceinline__ const char* cadd(const void* p, i64 bytes) { return (const char*)p + bytes; }

// Programmatic dependent launch (sm_90): the backend may launch a kernel
// while the one before it still runs. pdl_trigger lets the next kernel
// launch; pdl_wait blocks until the kernel before has finished and its
// writes are visible. Every kernel calls pdl_wait exactly once, in every
// thread, before it touches activations (anything a kernel writes); only
// weights may be read before. Without the launch attribute both are no-ops.
// PDL_MODE (a module define) says when a kernel lets the next one launch:
//   0 (early): at its start, before its own wait;
//   1 (late):  at each block's exit;
//   2 (mid):   right after its own wait returns, so the next kernel's blocks
//              can take idle SMs and issue their weight loads while this one
//              works, and no third kernel is in flight.
#ifndef PDL_MODE
#define PDL_MODE 1
#endif
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    if (PDL_MODE == 0) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (PDL_MODE == 2) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#define PDL_ENTRY() \
    do {            \
        pdl_trigger(); \
        pdl_wait();    \
    } while (0)

__device__ __forceinline__ float gelu_tanh(float g) {
    const float k0 = 0.7978845608028654f; // sqrt(2/pi)
    return 0.5f * g * (1.f + tanhf(k0 * (g + 0.044715f * g * g * g)));
}

// ---------------------------------------------------------------------------
// Tensor cores (sm_80+): bf16 packing, mma, ldmatrix, cp.async.

// pack_bf2 rounds two floats to bf16 (nearest even; one instruction from sm_80).
__device__ __forceinline__ u32 pack_bf2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
#endif
}

// mma_bf16 adds the 16×8 product of a 16×16 bf16 A fragment (a0..a3) and a
// 16×8 B fragment (b0, b1) to the f32 accumulators c (mma.m16n8k16).
__device__ __forceinline__ void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// ldsm4 loads four 8×8 bf16 matrices from shared memory (ldmatrix): lane i
// gives the address of row i%8 of matrix i/8, and register j of every lane
// receives its part of matrix j in the mma fragment layout.
__device__ __forceinline__ void ldsm4(u32 (&r)[4], const u16* p) {
#if __CUDA_ARCH__ >= 800 // (the kernels that use it run from sm_80 on)
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// ldsm4_trans is ldsm4 with each 8×8 matrix transposed (ldmatrix .trans):
// from a row-major [k][n] tile it gives the B fragments of an mma.
__device__ __forceinline__ void ldsm4_trans(u32 (&r)[4], const u16* p) {
#if __CUDA_ARCH__ >= 800
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// cp_async16 copies 16 bytes from global to shared memory asynchronously
// (both 16-byte aligned); cp_async_commit closes a group of copies and
// cp_async_wait<N> waits until at most N groups are in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
    const u32 a = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(gmem) : "memory");
#else
    *(uint4*)smem = *(const uint4*)gmem;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
