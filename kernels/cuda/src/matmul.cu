// matmul.cu: y = x·Wᵀ for dense and MLX affine-quantized weights, plain or
// per expert (expert e's weights at W + e·wstride bytes, its scales and
// biases at S/B + e·gstride bytes, e read from ids on the device).
//
// Matrix-vector kernels (one x row per "pair" p = blockIdx.y):
//   plain:   x row p, y row p, W fixed.
//   experts: e = ids[p], x row p / xdiv (xdiv = k when the k slots share
//            their token's row), y row p.
// They stage the x row in shared memory as f32 and give each warp R rows.
//
// GEMM kernels (M > 1) take 64x64 tiles, dequantize W into shared memory
// and multiply with bf16 tensor cores (mma.sync m16n8k16, f32 accumulate)
// or, for f32 activations, with f32 FMAs.

#define QMV_WARPS 8

// stage_x copies x row xoff.. (length K, type xdt) into shared memory as
// f32, chunked: element i at (i/E)·(E+PAD) + i%E. SUMS = 4 (4-bit kernel):
// odd elements are stored divided by 16, and xsum[2c] = 256·Σeven + 16·Σodd,
// xsum[2c+1] = Σ of chunk c. SUMS = 8: xsum[2c+1] = Σ of chunk c. A 16-byte
// aligned row is read with 16-byte loads, four in flight per thread.
struct Identity {
    __device__ __forceinline__ float operator()(float v, int) const { return v; }
};

// store_xs stores the VE (4 or 8) elements f of x vector idx into the
// chunked staging layout (element i at (i/E)·(E+PAD) + i%E). Where VE
// divides E they are contiguous and 16-byte aligned (E+PAD and VE are
// multiples of 4), and go as 16-byte stores: a warp's lanes, VE elements
// apart, then fall in distinct banks, where one float at a time they met
// four to a bank. load_xs reads them back (VE dividing E).
template <int E, int PAD>
__device__ __forceinline__ void store_xs(float* xs, int idx, int VE, const float (&f)[8]) {
    const int e = idx * VE;
    float* p = xs + (e / E) * (E + PAD) + e % E;
    if (E % 8 == 0 && VE == 8) {
        *(float4*)p = make_float4(f[0], f[1], f[2], f[3]);
        *(float4*)(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
    } else if (E % 4 == 0 && VE == 4) {
        *(float4*)p = make_float4(f[0], f[1], f[2], f[3]);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (k < VE) xs[((e + k) / E) * (E + PAD) + (e + k) % E] = f[k];
    }
}
template <int E, int PAD>
__device__ __forceinline__ void load_xs(const float* xs, int idx, int VE, float (&f)[8]) {
    const int e = idx * VE;
    const float* p = xs + (e / E) * (E + PAD) + e % E;
    const float4 a = *(const float4*)p;
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
    if (VE == 8) {
        const float4 b = *(const float4*)(p + 4);
        f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    }
}

// stage_xt is stage_x with each element v (index e) replaced by tf(v, e)
// before it is stored and summed.
template <int E, int PAD, int SUMS, class TF>
__device__ __forceinline__ void stage_xt(float* xs, float* xsum, const void* x, i64 xoff, int xdt, int K, TF tf);

template <int E, int PAD, int SUMS>
__device__ __forceinline__ void stage_x(float* xs, float* xsum, const void* x, i64 xoff, int xdt, int K) {
    stage_xt<E, PAD, SUMS>(xs, xsum, x, xoff, xdt, K, Identity());
}

template <int E, int PAD, int SUMS, class TF>
__device__ __forceinline__ void stage_xt(float* xs, float* xsum, const void* x, i64 xoff, int xdt, int K, TF tf) {
    const int esz = xdt == DT_F32 ? 4 : 2;
    const char* xr = (const char*)x + xoff * esz;
    const int VE = 16 / esz; // elements per 16-byte vector
    if (((size_t)xr & 15) == 0 && (K % VE) == 0 && (!SUMS || E % VE == 0)) {
        const int nvec = K / VE;
        const int VPC = E / VE; // vectors per chunk (SUMS only)
        for (int base = 0; base < nvec; base += 4 * blockDim.x) {
            uint4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int idx = base + u * blockDim.x + threadIdx.x;
                if (idx < nvec) v[u] = __ldg((const uint4*)xr + idx);
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int idx = base + u * blockDim.x + threadIdx.x;
                float se = 0.f, so = 0.f;
                if (idx < nvec) {
                    float f[8];
                    u32 w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
                    if (xdt == DT_F32) {
#pragma unroll
                        for (int k = 0; k < 4; k++) f[k] = __uint_as_float(w[k]);
                    } else if (xdt == DT_BF16) {
#pragma unroll
                        for (int k = 0; k < 4; k++) { f[2 * k] = __uint_as_float(w[k] << 16); f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
                    } else {
#pragma unroll
                        for (int k = 0; k < 4; k++) { f[2 * k] = h2f((u16)(w[k] & 0xffffu)); f[2 * k + 1] = h2f((u16)(w[k] >> 16)); }
                    }
#pragma unroll
                    for (int k = 0; k < 8; k++) {
                        if (k < VE) {
                            f[k] = tf(f[k], idx * VE + k);
                            if (k & 1) so += f[k]; else se += f[k];
                            if (SUMS == 4 && (k & 1)) f[k] *= 0.0625f;
                        }
                    }
                    store_xs<E, PAD>(xs, idx, VE, f);
                }
                if (SUMS) { // the VPC vectors of a chunk sit in consecutive lanes
                    for (int o = VPC / 2; o > 0; o >>= 1) {
                        se += __shfl_xor_sync(0xffffffffu, se, o);
                        so += __shfl_xor_sync(0xffffffffu, so, o);
                    }
                    if (idx < nvec && (idx % VPC) == 0) {
                        xsum[2 * (idx / VPC)] = 256.f * se + 16.f * so;
                        xsum[2 * (idx / VPC) + 1] = se + so;
                    }
                }
            }
        }
        __syncthreads();
        return;
    }
    for (int i = threadIdx.x; i < K; i += blockDim.x) xs[(i / E) * (E + PAD) + i % E] = tf(ldf(x, xoff + i, xdt), i);
    if (SUMS) {
        __syncthreads();
        int C = K / E;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float a = 0.f, b = 0.f;
            float* xc = xs + c * (E + PAD);
            for (int e = 0; e < E; e += 2) {
                a += xc[e];
                b += xc[e + 1];
                if (SUMS == 4) xc[e + 1] *= 0.0625f;
            }
            xsum[2 * c] = 256.f * a + 16.f * b;
            xsum[2 * c + 1] = a + b;
        }
    }
    __syncthreads();
}

// stage_xn stages the normed row: xs = tf(x, r, w) with r = rsqrt(mean(x²)
// + eps) and w the element's norm weight (nws, f32 in shared memory; 1
// where nws is null), in one pass over global memory (the raw values go to
// shared memory with Σx², then each thread transforms the elements it
// staged).
// It returns false (nothing done) when the row is not 16-byte aligned.
template <int E, int PAD, int SUMS, class TF>
__device__ __forceinline__ bool stage_xn(float* xs, float* xsum, const void* x, i64 xoff, int xdt, int K, float eps,
                                         float* red, const float* nws, TF tf) {
    const int esz = xdt == DT_F32 ? 4 : 2;
    const char* xr = (const char*)x + xoff * esz;
    const int VE = 16 / esz;
    if (!(((size_t)xr & 15) == 0 && (K % VE) == 0 && E % VE == 0)) return false;
    const int nvec = K / VE;
    const int VPC = E / VE;
    float ss = 0.f;
    for (int base = 0; base < nvec; base += 4 * blockDim.x) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int idx = base + u * blockDim.x + threadIdx.x;
            if (idx < nvec) v[u] = __ldg((const uint4*)xr + idx);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int idx = base + u * blockDim.x + threadIdx.x;
            if (idx < nvec) {
                float f[8];
                u32 w[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
                if (xdt == DT_F32) {
#pragma unroll
                    for (int k = 0; k < 4; k++) f[k] = __uint_as_float(w[k]);
                } else if (xdt == DT_BF16) {
#pragma unroll
                    for (int k = 0; k < 4; k++) { f[2 * k] = __uint_as_float(w[k] << 16); f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
                } else {
#pragma unroll
                    for (int k = 0; k < 4; k++) { f[2 * k] = h2f((u16)(w[k] & 0xffffu)); f[2 * k + 1] = h2f((u16)(w[k] >> 16)); }
                }
#pragma unroll
                for (int k = 0; k < 8; k++)
                    if (k < VE) ss += f[k] * f[k];
                store_xs<E, PAD>(xs, idx, VE, f);
            }
        }
    }
    ss = block_sum(ss, red);
    const float r = rsqrtf(ss / (float)K + eps);
    for (int base = 0; base < nvec; base += 4 * blockDim.x) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int idx = base + u * blockDim.x + threadIdx.x;
            float se = 0.f, so = 0.f;
            if (idx < nvec) {
                float f[8], wv[8];
                load_xs<E, PAD>(xs, idx, VE, f);
                const float* wp = nws + idx * VE; // read only where nws is set
                if (nws && ((size_t)wp & 15) == 0) { // 16-byte loads (see store_xs)
                    const float4 a = *(const float4*)wp;
                    wv[0] = a.x, wv[1] = a.y, wv[2] = a.z, wv[3] = a.w;
                    if (VE == 8) {
                        const float4 b = *(const float4*)(wp + 4);
                        wv[4] = b.x, wv[5] = b.y, wv[6] = b.z, wv[7] = b.w;
                    }
                } else {
#pragma unroll
                    for (int k = 0; k < 8; k++) wv[k] = nws && k < VE ? wp[k] : 1.f;
                }
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    if (k < VE) {
                        f[k] = tf(f[k], r, wv[k]);
                        if (k & 1) so += f[k]; else se += f[k];
                        if (SUMS == 4 && (k & 1)) f[k] *= 0.0625f;
                    }
                }
                store_xs<E, PAD>(xs, idx, VE, f);
            }
            if (SUMS) { // the VPC vectors of a chunk sit in consecutive lanes
                for (int o = VPC / 2; o > 0; o >>= 1) {
                    se += __shfl_xor_sync(0xffffffffu, se, o);
                    so += __shfl_xor_sync(0xffffffffu, so, o);
                }
                if (idx < nvec && (idx % VPC) == 0) {
                    xsum[2 * (idx / VPC)] = 256.f * se + 16.f * so;
                    xsum[2 * (idx / VPC) + 1] = se + so;
                }
            }
        }
    }
    __syncthreads();
    return true;
}

// nib returns the float whose bits are (s & mask) | 0x3f800000, in one LOP3.
__device__ __forceinline__ float nib(u32 s, u32 mask) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(s), "r"(mask), "r"(0x3f800000u));
    return __uint_as_float(r);
}

struct Pair {
    const char* W;
    const char* S;
    const char* B;
    i64 xrow;
    bool ok;
};

__device__ __forceinline__ Pair pair_of(int p, const void* W, const void* S, const void* B, const int* ids, int nexp,
                                        int xdiv, i64 wstride, i64 gstride) {
    Pair r;
    r.W = (const char*)W;
    r.S = (const char*)S;
    r.B = (const char*)B;
    r.xrow = p / xdiv;
    r.ok = true;
    if (ids) {
        int e = ids[p];
        if (e < 0 || e >= nexp) { r.ok = false; e = 0; }
        r.W += (i64)e * wstride;
        r.S += (i64)e * gstride;
        r.B += (i64)e * gstride;
    }
    return r;
}

__device__ __forceinline__ float f_of(u32 bits) { return __uint_as_float(bits); }

// ldg16 loads 16 bytes of streamed weights (read once: no L1 allocation; the
// L2 fetches 256 bytes ahead).
__device__ __forceinline__ uint4 ldg16(const void* p) {
    uint4 v;
#if __CUDA_ARCH__ >= 800
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
#else
    v = __ldg((const uint4*)p);
#endif
    return v;
}

// raw16or32 loads a scale or bias as raw bits (converted later by rawf).
__device__ __forceinline__ u32 ldraw(const char* p, i64 i, int dt) {
    return dt == DT_F32 ? __ldg((const u32*)p + i) : (u32)__ldg((const u16*)p + i);
}

__device__ __forceinline__ float rawf(u32 v, int dt) {
    if (dt == DT_BF16) return __uint_as_float(v << 16);
    if (dt == DT_F32) return __uint_as_float(v);
    return h2f((u16)v);
}

// dot_chunks sets a[i] = Σ f·x' over one 16-byte chunk w[i] of N rows and
// the staged x chunk xc (see qmv_fast for the encodings); each x vector is
// read once for all N rows.
template <int BITS, int N>
__device__ __forceinline__ void dot_chunks(const uint4 (&w)[N], const float* xc, float (&a)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) a[i] = 0.f;
    if (BITS == 4) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float4 x0 = *(const float4*)(xc + 8 * j);
            float4 x1 = *(const float4*)(xc + 8 * j + 4);
#pragma unroll
            for (int i = 0; i < N; i++) {
                u32 v = j == 0 ? w[i].x : j == 1 ? w[i].y : j == 2 ? w[i].z : w[i].w;
                u32 s0 = v << 15, s1 = v << 7, s2 = v >> 1, s3 = v >> 9;
                a[i] = fmaf(nib(s0, 0x78000u), x0.x, a[i]);
                a[i] = fmaf(nib(s0, 0x780000u), x0.y, a[i]);
                a[i] = fmaf(nib(s1, 0x78000u), x0.z, a[i]);
                a[i] = fmaf(nib(s1, 0x780000u), x0.w, a[i]);
                a[i] = fmaf(nib(s2, 0x78000u), x1.x, a[i]);
                a[i] = fmaf(nib(s2, 0x780000u), x1.y, a[i]);
                a[i] = fmaf(nib(s3, 0x78000u), x1.z, a[i]);
                a[i] = fmaf(nib(s3, 0x780000u), x1.w, a[i]);
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float4 xv = *(const float4*)(xc + 4 * j);
#pragma unroll
            for (int i = 0; i < N; i++) {
                u32 v = j == 0 ? w[i].x : j == 1 ? w[i].y : j == 2 ? w[i].z : w[i].w;
                a[i] = fmaf(f_of(__byte_perm(v, 0x4b000000u, 0x7650)) - 8388608.f, xv.x, a[i]);
                a[i] = fmaf(f_of(__byte_perm(v, 0x4b000000u, 0x7651)) - 8388608.f, xv.y, a[i]);
                a[i] = fmaf(f_of(__byte_perm(v, 0x4b000000u, 0x7652)) - 8388608.f, xv.z, a[i]);
                a[i] = fmaf(f_of(__byte_perm(v, 0x4b000000u, 0x7653)) - 8388608.f, xv.w, a[i]);
            }
        }
    }
}

// group_acc adds one chunk's a (from dot_chunks) with its group's scale and
// bias to a row total: scale·Σq·x + bias·Σx, where k1 and xt are the chunk's
// staged sums (4 bits: Σq·x = 256·a − k1).
template <int BITS>
__device__ __forceinline__ float group_acc(float acc, float a, float sc, float bi, float k1, float xt) {
    if (BITS == 4) return fmaf(sc, fmaf(256.f, a, -k1), fmaf(bi, xt, acc));
    return fmaf(sc, a, fmaf(bi, xt, acc));
}

// qmv_fast: BITS = 4 or 8, rows 16-byte aligned, group a multiple of the 16-byte
// chunk (32 values at 4 bits, 16 at 8 bits), the matrix under 4 GiB. Each
// lane takes whole chunks (one 16-byte load per row), the warp R rows at
// once. The warp walks a flat sequence of steps (row group, chunk
// iteration) and keeps the loads (weights, scales, biases) of the next
// DEPTH-1 steps in flight while it computes one, across row-group
// boundaries, so the reduction at the end of a row group never leaves the
// memory system idle. The ring of DEPTH load slots is indexed with
// compile-time constants (the step loop is unrolled by DEPTH).
//
// 4 bits: nibble q is moved to bit 15 (even) or 19 (odd) of the float
// 1.0 = 0x3f800000, which gives f = 1 + q/256 or 1 + q/16 exactly with one
// shift (per two nibbles) and one LOP3. With odd x staged as x/16, one
// accumulator a = Σ f·x' per chunk gives Σq·x = 256·a − (256·Σeven + 16·Σodd).
// 8 bits: byte q becomes 2^23 + q by a byte permute and is recovered exactly
// by one subtraction.
template <int BITS, int R, int DEPTH>
__device__ __forceinline__ void qmv_fast(void* y, int ydt, const void* x, int xdt, const void* W, const void* S,
                                         const void* B, int sdt, int N, int K, int group, const int* ids, int nexp,
                                         int xdiv, i64 wstride, i64 gstride) {
    constexpr int E = 128 / BITS; // values per 16-byte chunk
    constexpr int PAD = 4;
    float* smem = dyn_smem;
    float* xs = smem;
    const int C = K / E;
    float* xsum = smem + C * (E + PAD);
    const int p = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    pdl_trigger();
    if (ids) pdl_wait(); // the expert id comes from the kernel before
    Pair pr = pair_of(p, W, S, B, ids, nexp, xdiv, wstride, gstride);
    const u32 rowBytes = (u32)K * BITS / 8;
    const int G = K / group;
    const int sesz = sdt == DT_F32 ? 4 : 2;
    const u32 srowBytes = (u32)G * sesz;
    const int nIter = (C + 31) / 32;
    const int gshift = __ffs(group) - 1; // group is 32, 64 or 128
    const int NG = (N + R - 1) / R;      // row groups
    const int rg0 = blockIdx.x * QMV_WARPS + warp, rgStride = gridDim.x * QMV_WARPS;
    const int nrg = rg0 < NG ? (NG - 1 - rg0) / rgStride + 1 : 0;
    const int steps = nrg * nIter;

    uint4 wb[DEPTH][R];
    u32 sb[DEPTH][R], bb[DEPTH][R];
    int lq = 0, lit = 0; // load cursor: row group index q (rg = rg0 + q·rgStride), chunk iteration
    u32 wofs[R], sofs[R]; // byte offsets of the current load row group's rows
    auto issue = [&](int slot) {
        if (lit == 0) {
            int rg = rg0 + lq * rgStride;
#pragma unroll
            for (int r = 0; r < R; r++) {
                u32 row = (u32)min(rg * R + r, N - 1);
                wofs[r] = row * rowBytes;
                sofs[r] = row * srowBytes;
            }
        }
        int c = lane + 32 * lit;
        if (c < C) {
            u32 go = (u32)((c * E) >> gshift) * sesz;
#pragma unroll
            for (int r = 0; r < R; r++) {
                wb[slot][r] = ldg16(pr.W + wofs[r] + (u32)c * 16);
                const char* sp = pr.S + sofs[r] + go;
                const char* bp = pr.B + sofs[r] + go;
                if (sesz == 4) {
                    sb[slot][r] = __ldg((const u32*)sp);
                    bb[slot][r] = __ldg((const u32*)bp);
                } else {
                    sb[slot][r] = __ldg((const u16*)sp);
                    bb[slot][r] = __ldg((const u16*)bp);
                }
            }
        }
        if (++lit == nIter) { lit = 0; lq++; }
    };
    // Start the first loads before staging x: they do not depend on it.
#pragma unroll
    for (int d = 0; d < DEPTH - 1; d++)
        if (d < steps) issue(d);
    if (!ids) pdl_wait(); // weights only above: x comes from the kernel before
    stage_x<E, PAD, BITS>(xs, xsum, x, pr.xrow * K, xdt, K);

    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    int cq = 0, cit = 0; // compute cursor
    auto compute = [&](int slot) {
        const int c = lane + 32 * cit;
        if (c < C) {
            const float* xc = xs + c * (E + PAD);
            const float k1 = xsum[2 * c], xt = xsum[2 * c + 1];
            float a[R];
            dot_chunks<BITS, R>(wb[slot], xc, a);
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = group_acc<BITS>(acc[r], a[r], rawf(sb[slot][r], sdt), rawf(bb[slot][r], sdt), k1, xt);
        }
        if (++cit == nIter) { // row group done: reduce and store
            cit = 0;
            const int rg = rg0 + cq * rgStride;
            cq++;
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
            if (lane < R) {
                float v = acc[0];
#pragma unroll
                for (int r = 1; r < R; r++)
                    if (lane == r) v = acc[r];
                int row = rg * R + lane;
                if (row < N) stf(y, (i64)p * N + row, ydt, pr.ok ? v : __int_as_float(0x7fc00000));
            }
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = 0.f;
        }
    };
    // Step s+d computes slot d and first issues step s+d+DEPTH-1 into the
    // slot that step s+d-1 freed.
    for (int s = 0; s < steps; s += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            if (s + d < steps) {
                if (s + d + DEPTH - 1 < steps) issue((d + DEPTH - 1) % DEPTH);
                compute(d);
            }
        }
    }
}

#define QMV_ARGS                                                                                             \
    void *y, int ydt, const void *x, int xdt, const void *W, const void *S, const void *B, int sdt, int N, int K, \
        int group, const int *ids, int nexp, int xdiv, i64 wstride, i64 gstride
#define QMV_PASS y, ydt, x, xdt, W, S, B, sdt, N, K, group, ids, nexp, xdiv, wstride, gstride

// Variants: rows per warp R and pipeline depth (the backend picks one by
// shape; benchmarks and tests run them all). _lb3 caps registers for three
// blocks per SM.
#define QMV_KERNEL(NAME, BITS, R, DEPTH, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) NAME(QMV_ARGS) { qmv_fast<BITS, R, DEPTH>(QMV_PASS); }
QMV_KERNEL(qmv4_r1, 4, 1, 2, 4)
QMV_KERNEL(qmv4_r2, 4, 2, 2, 4)
QMV_KERNEL(qmv4_r4, 4, 4, 2, 2)
QMV_KERNEL(qmv4_r8, 4, 8, 2, 1)
QMV_KERNEL(qmv4_r1_d4, 4, 1, 4, 3)
QMV_KERNEL(qmv4_r2_d3, 4, 2, 3, 3)
QMV_KERNEL(qmv4_r2_d4, 4, 2, 4, 2)
QMV_KERNEL(qmv4_r4_d3, 4, 4, 3, 2)
QMV_KERNEL(qmv4_r4_lb3, 4, 4, 2, 3)
QMV_KERNEL(qmv8_r1, 8, 1, 2, 4)
QMV_KERNEL(qmv8_r2, 8, 2, 2, 4)
QMV_KERNEL(qmv8_r4, 8, 4, 2, 2)
QMV_KERNEL(qmv8_r8, 8, 8, 2, 1)
QMV_KERNEL(qmv8_r1_d4, 8, 1, 4, 3)
QMV_KERNEL(qmv8_r2_d3, 8, 2, 3, 3)
QMV_KERNEL(qmv8_r2_d4, 8, 2, 4, 2)
QMV_KERNEL(qmv8_r4_d3, 8, 4, 3, 2)
QMV_KERNEL(qmv8_r4_lb3, 8, 4, 2, 3)

// ---------------------------------------------------------------------------
// Fused matrix-vector kernels for decode (kernels.Fuser). One launch
// computes the products of one x row, normed in the staging (RMSNorm with an
// optional weight and scale, rounded as the unfused sequence stores it),
// with up to four weights of the same K and format (segments: their rows
// are concatenated, each a multiple of R), or the gated GeLU of two (GLU:
// gate rows and the same up rows in one warp, y = gelu(g)·u). Expert mode
// (ids set): pair p = blockIdx.y uses expert ids[p] of every segment and x
// row p / xdiv. The parameters are one struct of 8-byte fields, laid out by
// the backend (fused.go).

struct MVSeg {
    const char* W;
    const char* S;
    const char* B;
    char* y;
    i64 start; // first row over the concatenated segments
    i64 rows;  // a multiple of R
    i64 ydt;
};

struct MVParams {
    MVSeg seg[4];
    i64 nseg, K, group, sdt;
    const char* x;
    i64 xdt, xdiv;
    const char* nw; // norm weight (null: none)
    i64 nwdt, norm, xrdt;
    double eps, nscale, softcap;
    const int* ids;
    i64 nexp, wstride, gstride;
    i64 ks; // qmvt: warps sharing one tile's K (1, 2, 4 or 8)
};

// The segment of row (over the concatenation): compile-time indices only,
// so the parameters stay in the constant bank.
__device__ __forceinline__ int seg_of(const MVParams& P, int row) {
    int s = 0;
#pragma unroll
    for (int t = 1; t < 4; t++)
        if (t < (int)P.nseg && row >= (int)P.seg[t].start) s = t;
    return s;
}

#define SEG_FIELD(P, s, f) ((s) == 0 ? (P).seg[0].f : (s) == 1 ? (P).seg[1].f : (s) == 2 ? (P).seg[2].f : (P).seg[3].f)

// store_vec_f32 writes the values of one 16-byte vector of type dt (4 f32
// or 8 f16/bf16) to d as f32, with 16-byte stores where d is 16-byte
// aligned (see store_xs).
__device__ __forceinline__ void store_vec_f32(float* d, uint4 v, int dt) {
    u32 w[4] = {v.x, v.y, v.z, v.w};
    float f[8];
    const int n = dt == DT_F32 ? 4 : 8;
    if (dt == DT_F32) {
#pragma unroll
        for (int k = 0; k < 4; k++) f[k] = __uint_as_float(w[k]);
    } else if (dt == DT_BF16) {
#pragma unroll
        for (int k = 0; k < 4; k++) { f[2 * k] = __uint_as_float(w[k] << 16); f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
    } else {
#pragma unroll
        for (int k = 0; k < 4; k++) { f[2 * k] = h2f((u16)(w[k] & 0xffffu)); f[2 * k + 1] = h2f((u16)(w[k] >> 16)); }
    }
    if (((size_t)d & 15) == 0) {
        *(float4*)d = make_float4(f[0], f[1], f[2], f[3]);
        if (n == 8) *(float4*)(d + 4) = make_float4(f[4], f[5], f[6], f[7]);
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; k++)
        if (k < n) d[k] = f[k];
}

// MVNormLoad is the norm weight of a fused matrix-vector launch read at
// kernel entry: it does not depend on the kernels before, so its loads are
// issued first (two 16-byte vectors a thread in flight across the PDL
// wait); mv_stage stores it as f32 after the x row (nws, K values), so the
// transform after the norm's reduction reads shared memory instead of
// waiting for another global round trip.
struct MVNormLoad {
    uint4 v[2];
    bool vec;
};

__device__ __forceinline__ MVNormLoad mv_norm_load(const MVParams& P) {
    MVNormLoad l;
    const void* nw = P.norm ? P.nw : nullptr;
    const int K = (int)P.K;
    const int NVE = (int)P.nwdt == DT_F32 ? 4 : 8; // norm weight values per vector
    l.vec = nw && ((size_t)nw & 15) == 0 && K % NVE == 0;
    if (l.vec) {
#pragma unroll
        for (int u = 0; u < 2; u++) {
            int idx = threadIdx.x + u * blockDim.x;
            if (idx < K / NVE) l.v[u] = __ldg((const uint4*)nw + idx);
        }
    }
    return l;
}

// mv_stage stages x row p / xdiv into xs and xsum (normed when P.norm,
// the norm weight at nws = xsum + 2·C), ending with a barrier.
template <int BITS>
__device__ __forceinline__ void mv_stage(const MVParams& P, float* xs, float* xsum, float* red, const MVNormLoad& nl, int p) {
    constexpr int E = 128 / BITS, PAD = 4;
    const int K = (int)P.K, C = K / E;
    const void* nw = P.norm ? P.nw : nullptr;
    const int nwdt = (int)P.nwdt;
    const int NVE = nwdt == DT_F32 ? 4 : 8;
    const i64 xoff = (i64)(p / (int)P.xdiv) * K;
    const int xdt = (int)P.xdt;
    const int xrdt = (int)P.xrdt;
    const float nscale = (float)P.nscale, eps = (float)P.eps;
    float* nws = xsum + 2 * C;
    if (nw) { // published by the barriers of the norm's reduction
        if (nl.vec) {
            const int nv = K / NVE;
#pragma unroll
            for (int u = 0; u < 2; u++) {
                int idx = threadIdx.x + u * blockDim.x;
                if (idx < nv) store_vec_f32(nws + idx * NVE, nl.v[u], nwdt);
            }
            for (int idx = threadIdx.x + 2 * blockDim.x; idx < nv; idx += blockDim.x)
                store_vec_f32(nws + idx * NVE, __ldg((const uint4*)nw + idx), nwdt);
        } else {
            for (int i = threadIdx.x; i < K; i += blockDim.x) nws[i] = ldf(nw, i, nwdt);
        }
    }
    auto tf = [&](float v, float r, float w) -> float {
        v = v * r;
        if (nw) v *= w;
        v = round_act(v, xrdt);
        if (nscale != 1.f) v = round_act(nscale * v, xrdt);
        return v;
    };
    if (!P.norm) {
        stage_x<E, PAD, BITS>(xs, xsum, P.x, xoff, xdt, K);
    } else if (!stage_xn<E, PAD, BITS>(xs, xsum, P.x, xoff, xdt, K, eps, red, nw ? nws : nullptr, tf)) {
        float ss = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            float v = ldf(P.x, xoff + i, xdt);
            ss += v * v;
        }
        ss = block_sum(ss, red);
        const float r = rsqrtf(ss / (float)K + eps);
        stage_xt<E, PAD, BITS>(xs, xsum, P.x, xoff, xdt, K, [&](float v, int e) { return tf(v, r, nw ? nws[e] : 1.f); });
    }
}

// mv_store_row stores row `row` (over the concatenated segments) of pair p
// from its total v0 (for GLU: the gate total, v1 the up total): the gated
// GeLU for GLU, else the softcap if set; NaN for an invalid expert id.
template <bool GLU>
__device__ __forceinline__ void mv_store_row(const MVParams& P, int row, int p, float v0, float v1, bool ok) {
    const int s = GLU ? 0 : seg_of(P, row);
    row -= (int)SEG_FIELD(P, s, start);
    const int ydt = (int)SEG_FIELD(P, s, ydt);
    const float cap = (float)P.softcap;
    float v;
    if (GLU) {
        v = gelu_tanh(round_act(v0, ydt)) * round_act(v1, ydt);
    } else {
        v = v0;
        if (cap > 0.f) v = cap * tanhf(round_act(v, ydt) * (1.f / cap));
    }
    stf(SEG_FIELD(P, s, y), (i64)p * SEG_FIELD(P, s, rows) + row, ydt, ok ? v : __int_as_float(0x7fc00000));
}

// mv_store reduces a warp's row totals (acc: R rows, then for GLU their R up
// rows) and stores row group rg (rows rg·R.. over the concatenated
// segments) of pair p (mv_store_row).
template <int R, bool GLU>
__device__ __forceinline__ void mv_store(const MVParams& P, float (&acc)[GLU ? 2 * R : R], int rg, int p, bool ok) {
    constexpr int RR = GLU ? 2 * R : R;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < RR; i++) acc[i] = warp_sum(acc[i]);
    if (lane < R) {
        float v0 = acc[0], v1 = acc[GLU ? R : 0];
#pragma unroll
        for (int r = 1; r < R; r++)
            if (lane == r) {
                v0 = acc[r];
                v1 = acc[GLU ? R + r : r];
            }
        mv_store_row<GLU>(P, rg * R + lane, p, v0, v1, ok);
    }
}

// mv_expert sets the byte offsets of pair p's expert (weights, then scales
// and biases) in expert mode, after the PDL wait (the id comes from the
// kernel before), and reports whether the id is valid (an invalid one
// reads expert 0 and stores NaN).
__device__ __forceinline__ bool mv_expert(const MVParams& P, int p, i64& eoff, i64& goff) {
    bool ok = true;
    if (P.ids) {
        pdl_wait();
        int e = P.ids[p];
        if (e < 0 || e >= (int)P.nexp) { ok = false; e = 0; }
        eoff = (i64)e * P.wstride;
        goff = (i64)e * P.gstride;
    }
    return ok;
}

// team_sync is a barrier of the KS warps of team t (named barrier 1 + t).
__device__ __forceinline__ void team_sync(int t, int KS) {
    asm volatile("bar.sync %0, %1;" ::"r"(1 + t), "r"(32 * KS) : "memory");
}

// KS > 1 (launches of few row groups, such as the router's 128 rows): KS
// warps share each row group, warp kq of a team taking the chunk iterations
// kq, kq + KS, ..., so that each warp's chain of steps is KS times shorter;
// the team's totals meet in shared memory at a named barrier and are summed
// in warp order.
template <int BITS, int R, int DEPTH, bool GLU, int KS = 1>
__device__ __forceinline__ void qmvx(const MVParams& P) {
    static_assert(KS == 1 || KS == 2 || KS == 4 || KS == 8, "KS divides the block's warps");
    constexpr int E = 128 / BITS; // values per 16-byte chunk
    constexpr int PAD = 4;
    constexpr int NB = GLU ? 2 : 1; // weights per row group
    constexpr int RR = NB * R;      // rows loaded per row group
    __shared__ float red[32];
    float* xs = dyn_smem;
    const int K = (int)P.K;
    const int C = K / E;
    float* xsum = xs + C * (E + PAD);
    const int p = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    pdl_trigger();
    const MVNormLoad nl = mv_norm_load(P);
    i64 eoff = 0, goff = 0;
    bool ok = mv_expert(P, p, eoff, goff);
    const int sdt = (int)P.sdt;
    const u32 rowBytes = (u32)K * BITS / 8;
    const int G = K / (int)P.group;
    const int sesz = sdt == DT_F32 ? 4 : 2;
    const u32 srowBytes = (u32)G * sesz;
    const int nIter = (C + 32 * KS - 1) / (32 * KS);
    const int gshift = __ffs((int)P.group) - 1; // group is 32, 64 or 128
    const int nseg = (int)P.nseg;
    const int NT = GLU ? (int)P.seg[0].rows : (int)(SEG_FIELD(P, nseg - 1, start) + SEG_FIELD(P, nseg - 1, rows));
    const int NG = NT / R; // row groups
    constexpr int TEAMS = QMV_WARPS / KS;
    const int team = warp / KS, kq = warp % KS;
    const int rg0 = blockIdx.x * TEAMS + team, rgStride = gridDim.x * TEAMS;
    const int nrg = rg0 < NG ? (NG - 1 - rg0) / rgStride + 1 : 0;
    const int steps = nrg * nIter;

    uint4 wb[DEPTH][RR];
    u32 sb[DEPTH][RR], bb[DEPTH][RR];
    int lq = 0, lit = 0; // load cursor
    const char* wbase[NB];
    const char* sbase[NB];
    const char* bbase[NB];
    u32 wofs[R], sofs[R];
    auto issue = [&](int slot) {
        if (lit == 0) {
            int row = (rg0 + lq * rgStride) * R;
            int s = 0;
            if (!GLU) {
                s = seg_of(P, row);
                row -= (int)SEG_FIELD(P, s, start);
            }
#pragma unroll
            for (int b = 0; b < NB; b++) {
                wbase[b] = SEG_FIELD(P, s + b, W) + eoff;
                sbase[b] = SEG_FIELD(P, s + b, S) + goff;
                bbase[b] = SEG_FIELD(P, s + b, B) + goff;
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                wofs[r] = (u32)(row + r) * rowBytes;
                sofs[r] = (u32)(row + r) * srowBytes;
            }
        }
        int c = lane + 32 * (kq + KS * lit);
        if (c < C) {
            u32 go = (u32)((c * E) >> gshift) * sesz;
#pragma unroll
            for (int i = 0; i < RR; i++) {
                const int b = i / R, r = i % R;
                wb[slot][i] = ldg16(wbase[b] + wofs[r] + (u32)c * 16);
                const char* sp = sbase[b] + sofs[r] + go;
                const char* bp = bbase[b] + sofs[r] + go;
                if (sesz == 4) {
                    sb[slot][i] = __ldg((const u32*)sp);
                    bb[slot][i] = __ldg((const u32*)bp);
                } else {
                    sb[slot][i] = __ldg((const u16*)sp);
                    bb[slot][i] = __ldg((const u16*)bp);
                }
            }
        }
        if (++lit == nIter) { lit = 0; lq++; }
    };
    // Weights first: they do not depend on the kernels before.
#pragma unroll
    for (int d = 0; d < DEPTH - 1; d++)
        if (d < steps) issue(d);
    if (!P.ids) pdl_wait();
    mv_stage<BITS>(P, xs, xsum, red, nl, p);

    float acc[RR];
#pragma unroll
    for (int i = 0; i < RR; i++) acc[i] = 0.f;
    int cq = 0, cit = 0; // compute cursor
    __shared__ float part[KS > 1 ? QMV_WARPS * RR : 1];
    auto compute = [&](int slot) {
        const int c = lane + 32 * (kq + KS * cit);
        if (c < C) {
            const float* xc = xs + c * (E + PAD);
            const float k1 = xsum[2 * c], xt = xsum[2 * c + 1];
            float a[RR];
            dot_chunks<BITS, RR>(wb[slot], xc, a);
#pragma unroll
            for (int i = 0; i < RR; i++)
                acc[i] = group_acc<BITS>(acc[i], a[i], rawf(sb[slot][i], sdt), rawf(bb[slot][i], sdt), k1, xt);
        }
        if (++cit == nIter) { // row group done: reduce and store
            cit = 0;
            const int rg = rg0 + cq * rgStride;
            cq++;
            if (KS == 1) {
                mv_store<R, GLU>(P, acc, rg, p, ok);
            } else {
#pragma unroll
                for (int i = 0; i < RR; i++) acc[i] = warp_sum(acc[i]);
                if (lane == 0) {
#pragma unroll
                    for (int i = 0; i < RR; i++) part[warp * RR + i] = acc[i];
                }
                team_sync(team, KS);
                if (kq == 0 && lane < R) {
                    const float* tp = part + team * KS * RR;
                    float v0 = 0.f, v1 = 0.f;
#pragma unroll
                    for (int j = 0; j < KS; j++) {
                        v0 += tp[j * RR + lane];
                        if (GLU) v1 += tp[j * RR + R + lane];
                    }
                    mv_store_row<GLU>(P, rg * R + lane, p, v0, v1, ok);
                }
                team_sync(team, KS); // part is free for the next row group
            }
#pragma unroll
            for (int i = 0; i < RR; i++) acc[i] = 0.f;
        }
    };
    for (int s = 0; s < steps; s += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            if (s + d < steps) {
                if (s + d + DEPTH - 1 < steps) issue((d + DEPTH - 1) % DEPTH);
                compute(d);
            }
        }
    }
}

#define QMVX_KERNEL(NAME, BITS, R, GLU, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) NAME(const MVParams P) { qmvx<BITS, R, 2, GLU>(P); }
#define QMVX_KERNEL_D(NAME, BITS, R, DEPTH, GLU, MINB) \
    extern "C" __global__ void __launch_bounds__(256, MINB) NAME(const MVParams P) { qmvx<BITS, R, DEPTH, GLU>(P); }
QMVX_KERNEL(qmvx4_r1, 4, 1, false, 3)
QMVX_KERNEL(qmvx4_r2, 4, 2, false, 3)
QMVX_KERNEL(qmvx4_r4, 4, 4, false, 2)
QMVX_KERNEL(qmvx8_r1, 8, 1, false, 3)
QMVX_KERNEL(qmvx8_r2, 8, 2, false, 3)
QMVX_KERNEL(qmvx8_r4, 8, 4, false, 2)
QMVX_KERNEL(glu4_r1, 4, 1, true, 3)
QMVX_KERNEL(glu4_r2, 4, 2, true, 2)
QMVX_KERNEL(glu8_r1, 8, 1, true, 3)
QMVX_KERNEL(glu8_r2, 8, 2, true, 2)
// Three steps of loads in flight: the backend's choice without expert ids
// (measured: q/k/v 13.8 -> 12.5 us, dense gate/up 9.7 -> 9.5, the experts'
// gate/up 15.8 -> 16.7, so those keep two).
QMVX_KERNEL_D(qmvx4_r1_d3, 4, 1, 3, false, 3)
QMVX_KERNEL_D(qmvx4_r2_d3, 4, 2, 3, false, 2)
QMVX_KERNEL_D(qmvx4_r4_d3, 4, 4, 3, false, 2)
QMVX_KERNEL_D(glu4_r1_d3, 4, 1, 3, true, 2)
QMVX_KERNEL_D(glu4_r2_d3, 4, 2, 3, true, 2)
QMVX_KERNEL_D(qmvx8_r1_d3, 8, 1, 3, false, 3)
QMVX_KERNEL_D(qmvx8_r2_d3, 8, 2, 3, false, 2)
QMVX_KERNEL_D(qmvx8_r4_d3, 8, 4, 3, false, 2)
QMVX_KERNEL_D(glu8_r1_d3, 8, 1, 3, true, 2)
QMVX_KERNEL_D(glu8_r2_d3, 8, 2, 3, true, 2)
// KS warps a row (see qmvx), for launches of few rows.
#define QMVX_KERNEL_K(NAME, BITS, KS) \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME(const MVParams P) { qmvx<BITS, 1, 2, false, KS>(P); }
QMVX_KERNEL_K(qmvx4_r1_k2, 4, 2)
QMVX_KERNEL_K(qmvx4_r1_k4, 4, 4)
QMVX_KERNEL_K(qmvx4_r1_k8, 4, 8)
QMVX_KERNEL_K(qmvx8_r1_k2, 8, 2)
QMVX_KERNEL_K(qmvx8_r1_k4, 8, 4)
QMVX_KERNEL_K(qmvx8_r1_k8, 8, 8)

// ---------------------------------------------------------------------------
// qmvt: matrix-vector products of 4-bit weights and a bf16 x row on the
// tensor cores (the MVParams of qmvx, one x row a pair), for the large
// products of decode (the LM head). The CUDA-core kernels above spend about
// 2.5 instructions a weight on the dequantization and the FMA, which holds
// the 4-bit LM head near 0.6 of the DRAM peak; here the dequantization is
// under one instruction a weight and the products run on the mma units
// (0.67). Small products stay on the CUDA-core kernels, whose staging is
// lighter (the backend's qmvtMinBytes).
//
// A warp multiplies a tile of 16 weight rows (GLU: 8 gate rows, then the
// same 8 up rows) by x with mma.m16n8k16: A is the tile, B holds x. A step
// covers 256 values of K; lane (r0 = lane/4, j = lane%4) takes the 16-byte
// chunks 8s+4h+j (h = 0, 1: a quad reads 64 contiguous bytes of a row at a
// time) of rows r0 and r0+8, and turns each word's nibbles i and i+4 into
// the bf16 pair (128+q_i, 128+q_{i+4}) with one LOP3 — exact, and in the
// mma fragment layout once x is staged in the same order (any permutation
// of K applied to both sides leaves the product unchanged). The step's first eight mmas
// take every lane's chunk h = 0, the next eight chunk h = 1.
//
// Scales and biases are per group (32, 64 or 128 values), and an mma sums
// over the four lanes of a quad, whose chunks may lie in different groups:
// B column n = lane/4 carries x only where n is the column of the group of
// the chunk (its index among the step's groups), zero elsewhere, so
// accumulator column c of a step is group s·256/group + c alone. The lane
// holding columns 2j, 2j+1 then adds scale·(Σ(128+q)x − 128·Σx) + bias·Σx
// for each row and group, with Σx of each group staged with x.
//
// Each block's 8 warps take RW = 8/KS tiles, KS warps a tile, each warp a
// contiguous slice of the tile's steps; the slices meet in shared memory in
// a fixed order. The weights of the next DEPTH-1 steps are in flight while a
// step multiplies, across tiles: each lane copies its four 16-byte chunks
// into its own slots of a shared-memory ring with cp.async (bytes in flight
// without registers) and reads back only what it copied itself; the scales
// and biases ride in registers (SE: their size, 2 or 4 bytes).
#define QMVT_DEPTH 3
#define QMVT_XB 20 // words a staged x chunk takes (16 and 4 of padding)

__device__ __forceinline__ void cp_async16_l2(void* smem, const void* gmem) {
    const u32 a = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(a), "l"(gmem) : "memory");
}

// qmvt_scale reads the scales or biases of groups g0 and g0+1 (the second
// only where two is set; g0 is even) at p (group g0) as raw bits: 16-bit
// types in one word, g0 in the low half (one load where the row is 4-byte
// aligned: al); f32 in v[0], v[1].
template <int SDT>
__device__ __forceinline__ void qmvt_scale(u32* v, const char* p, bool two, bool al) {
    if (SDT != DT_F32) {
        if (two && al) {
            v[0] = __ldg((const u32*)p);
        } else {
            v[0] = __ldg((const u16*)p);
            if (two) v[0] |= (u32)__ldg((const u16*)p + 1) << 16;
        }
    } else {
        v[0] = __ldg((const u32*)p);
        v[1] = two ? __ldg((const u32*)p + 1) : 0u;
    }
}

// qmvt_scalef is the value of group g0+e from qmvt_scale's registers.
template <int SDT>
__device__ __forceinline__ float qmvt_scalef(const u32* v, int e) {
    if (SDT == DT_BF16) return __uint_as_float(e ? v[0] & 0xffff0000u : v[0] << 16);
    if (SDT == DT_F16) return h2f((u16)(v[0] >> (16 * e)));
    return __uint_as_float(v[e]);
}

template <bool GLU, int SDT>
__device__ __forceinline__ void qmvt(const MVParams& P) {
    constexpr int SE = SDT == DT_F32 ? 4 : 2;
    constexpr int DEPTH = QMVT_DEPTH;
    constexpr int NV = SE == 2 ? 1 : 2; // registers a (row, kind) of a slot
    __shared__ float red[32];
    __shared__ float part[QMV_WARPS * 16]; // each warp's row totals of its slice
    typedef uint4 Ring[DEPTH][4][32];      // a warp's ring: [slot][row a/b, chunk h][lane]
    Ring* ring = (Ring*)dyn_smem;          // QMV_WARPS rings, then x
    constexpr int E8 = 16, PAD = 4;        // x staged as by the 8-bit kernels, then repacked
    const int K = (int)P.K;
    const int C8 = K / E8;
    float* xs = dyn_smem + QMV_WARPS * DEPTH * 4 * 32 * 4;
    float* xsum = xs + C8 * (E8 + PAD);
    const int C = K / 32; // 16-byte chunks a row
    // x as B fragments: chunk c at xb + QMVT_XB·c (16 pairs, padded so that
    // the four chunks a step's lanes read sit in different banks); chunk C
    // is zero.
    u32* xb = (u32*)(xsum + 2 * C8 + (P.norm && P.nw ? K : 0));
    float* xg = (float*)(xb + (C + 1) * QMVT_XB); // Σx of each group
    const int p = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = lane >> 2, j = lane & 3;
    pdl_trigger();
    const MVNormLoad nl = mv_norm_load(P);
    i64 eoff = 0, goff = 0;
    bool ok = mv_expert(P, p, eoff, goff);
    const u32 rowBytes = (u32)K / 2;
    const int group = (int)P.group;
    const int G = K / group;
    const u32 srowBytes = (u32)G * SE;
    const int gshift = __ffs(group) - 1; // group is 32, 64 or 128
    const int gps = 256 >> gshift;       // groups a step (8, 4 or 2)
    const int col0 = (32 * j) >> gshift, col1 = (32 * j + 128) >> gshift; // B columns of chunks h = 0, 1
    const bool folds = 2 * j < gps;      // this lane holds columns 2j, 2j+1
    const int KS = (int)P.ks, RW = QMV_WARPS / KS;
    const int S = (C + 7) / 8;        // steps a tile
    const int ns = (S + KS - 1) / KS; // steps a slice
    const int tt = warp / KS, kw = warp % KS;
    const int s0 = kw * ns;
    const int nseg = (int)P.nseg;
    const int NT = GLU ? 2 * (int)P.seg[0].rows : (int)(SEG_FIELD(P, nseg - 1, start) + SEG_FIELD(P, nseg - 1, rows));
    const int NTL = NT / 16;             // tiles
    const int ntg = (NTL + RW - 1) / RW; // tile groups
    const int niter = (int)blockIdx.x < ntg ? (ntg - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int total = niter * ns;

    // Row h (0: a = r0, 1: b = r0+8) of tile t: its weights, scales and
    // the offset from its scales to its biases.
    const char* wr[2] = {nullptr, nullptr};
    const char* sr[2] = {nullptr, nullptr};
    i64 bo[2] = {0, 0};
    bool al[2] = {false, false}; // the row's scales and biases start 4-byte aligned
    auto tile_row = [&](int t, int h) {
        int row, sg;
        if (GLU) {
            row = t * 8 + r0;
            sg = h;
        } else {
            row = t * 16 + r0 + 8 * h;
            sg = seg_of(P, row);
            row -= (int)SEG_FIELD(P, sg, start);
        }
        wr[h] = SEG_FIELD(P, sg, W) + eoff + (i64)row * rowBytes;
        sr[h] = SEG_FIELD(P, sg, S) + goff + (i64)row * srowBytes;
        bo[h] = SEG_FIELD(P, sg, B) - SEG_FIELD(P, sg, S);
        al[h] = (((size_t)sr[h] | (size_t)(sr[h] + bo[h])) & 3) == 0;
    };
    u32 sc[DEPTH][4 * NV]; // [row a scales, row a biases, row b scales, row b biases]
    int lt = -1;           // the tile whose rows wr, sr hold
    // Cursors (step within the slice, tile) of the next issue and compute:
    // step q is step s0 + q % ns of tile (blockIdx.x + q / ns · gridDim.x)·RW + tt.
    const int tstride = (int)gridDim.x * RW;
    int is = 0, itile = (int)blockIdx.x * RW + tt, iq = 0;
    int cs = 0, ctile = itile;
    auto issue = [&](int slot) {
        const int s = s0 + is, t = itile;
        if (iq < total && t < NTL && s < S) {
            if (t != lt) {
                tile_row(t, 0);
                tile_row(t, 1);
                lt = t;
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int c = 8 * s + 4 * h + j;
                if (c < C) {
                    cp_async16_l2(&ring[warp][slot][h][lane], wr[0] + (u32)c * 16);
                    cp_async16_l2(&ring[warp][slot][2 + h][lane], wr[1] + (u32)c * 16);
                }
            }
            const int g0 = s * gps + 2 * j;
            if (folds && g0 < G) {
                const bool two = 2 * j + 1 < gps && g0 + 1 < G;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    qmvt_scale<SDT>(&sc[slot][(2 * h) * NV], sr[h] + (u32)g0 * SE, two, al[h]);
                    qmvt_scale<SDT>(&sc[slot][(2 * h + 1) * NV], sr[h] + bo[h] + (u32)g0 * SE, two, al[h]);
                }
            }
        }
        cp_async_commit(); // one group a step, empty or not: the waits count steps
        iq++;
        if (++is == ns) {
            is = 0;
            itile += tstride;
        }
    };
    // Weights first: they do not depend on the kernels before.
#pragma unroll
    for (int d = 0; d < DEPTH - 1; d++) issue(d);
    if (!P.ids) pdl_wait();
    mv_stage<8>(P, xs, xsum, red, nl, p);
    // Repack x as the B fragments: pair e of chunk c is (x[k], x[k+4]) with
    // k = 32c + 8(e/4) + e%4, the order of the nibble pairs of the weights.
    for (int i = threadIdx.x; i < (C + 1) * 16; i += blockDim.x) {
        const int c = i >> 4, e = i & 15;
        u32 v = 0;
        if (c < C) {
            const int k = 32 * c + 8 * (e >> 2) + (e & 3);
            v = pack_bf2(xs[(k >> 4) * (E8 + PAD) + (k & 15)], xs[((k + 4) >> 4) * (E8 + PAD) + ((k + 4) & 15)]);
        }
        xb[c * QMVT_XB + e] = v;
    }
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float t = 0.f;
        for (int c = g * (group >> 4); c < (g + 1) * (group >> 4); c++) t += xsum[2 * c + 1];
        xg[g] = t;
    }
    __syncthreads();

    float ya = 0.f, yb = 0.f;
    auto compute = [&](int slot) {
        const int s = s0 + cs, t = ctile;
        cp_async_wait<DEPTH - 1>(); // this step's copies (this lane's own) have landed
        if (t < NTL && s < S) {
            float d[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}}; // two chains
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int c = 8 * s + 4 * h + j;
                const bool live = r0 == (h ? col1 : col0) && c < C;
                const uint4* bp = (const uint4*)(xb + QMVT_XB * (live ? c : C));
                const uint4 va = ring[warp][slot][h][lane], vb = ring[warp][slot][2 + h][lane];
                const u32 wa4[4] = {va.x, va.y, va.z, va.w};
                const u32 wb4[4] = {vb.x, vb.y, vb.z, vb.w};
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const uint4 bx = bp[u];
                    u32 a[4], b[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(a[i]) : "r"(wa4[u] >> (4 * i)), "r"(0x000f000fu), "r"(0x43004300u));
                        asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(b[i]) : "r"(wb4[u] >> (4 * i)), "r"(0x000f000fu), "r"(0x43004300u));
                    }
                    mma_bf16(d[u & 1], a[0], b[0], a[1], b[1], bx.x, bx.y);
                    mma_bf16(d[u & 1], a[2], b[2], a[3], b[3], bx.z, bx.w);
                }
            }
            const int g0 = s * gps + 2 * j;
            if (folds) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int g = g0 + e;
                    if (2 * j + e < gps && g < G) {
                        const float X = xg[g];
                        const float sa = qmvt_scalef<SDT>(&sc[slot][0], e), ba = qmvt_scalef<SDT>(&sc[slot][NV], e);
                        const float sb = qmvt_scalef<SDT>(&sc[slot][2 * NV], e), bb = qmvt_scalef<SDT>(&sc[slot][3 * NV], e);
                        ya = fmaf(sa, fmaf(-128.f, X, d[0][e] + d[1][e]), fmaf(ba, X, ya));
                        yb = fmaf(sb, fmaf(-128.f, X, d[0][2 + e] + d[1][2 + e]), fmaf(bb, X, yb));
                    }
                }
            }
        }
        if (++cs == ns) { // the slice of tile t is done
            cs = 0;
            ctile += tstride;
            ya += __shfl_xor_sync(0xffffffffu, ya, 1);
            yb += __shfl_xor_sync(0xffffffffu, yb, 1);
            ya += __shfl_xor_sync(0xffffffffu, ya, 2);
            yb += __shfl_xor_sync(0xffffffffu, yb, 2);
            if (KS == 1) {
                if (j == 0 && t < NTL) {
                    if (GLU) {
                        mv_store_row<true>(P, t * 8 + r0, p, ya, yb, ok);
                    } else {
                        mv_store_row<false>(P, t * 16 + r0, p, ya, 0.f, ok);
                        mv_store_row<false>(P, t * 16 + r0 + 8, p, yb, 0.f, ok);
                    }
                }
            } else {
                if (j == 0) {
                    part[warp * 16 + r0] = ya;
                    part[warp * 16 + r0 + 8] = yb;
                }
                __syncthreads();
                const int i = threadIdx.x;
                const int tb = t - tt; // the block's first tile
                if (GLU ? i < RW * 8 : i < RW * 16) {
                    const int ti = GLU ? i / 8 : i / 16, r = GLU ? i % 8 : i % 16;
                    if (tb + ti < NTL) {
                        float v0 = 0.f, v1 = 0.f;
                        for (int k = 0; k < KS; k++) {
                            v0 += part[(ti * KS + k) * 16 + r];
                            if (GLU) v1 += part[(ti * KS + k) * 16 + r + 8];
                        }
                        mv_store_row<GLU>(P, (tb + ti) * (GLU ? 8 : 16) + r, p, v0, v1, ok);
                    }
                }
                __syncthreads();
            }
            ya = yb = 0.f;
        }
    };
    // Step q+d computes slot d after issuing step q+d+DEPTH-1 into the slot
    // that step q+d-1 freed (this lane read it back before).
    for (int q = 0; q < total; q += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; d++) {
            if (q + d < total) {
                issue((d + DEPTH - 1) % DEPTH);
                compute(d);
            }
        }
    }
    cp_async_wait<0>();
}

#define QMVT_KERNEL(NAME, GLU, SDT) \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(const MVParams P) { qmvt<GLU, SDT>(P); }
// Scales and biases in bf16 (MLX's default), f16 (_h) or f32 (_s4).
QMVT_KERNEL(qmvt4, false, DT_BF16)
QMVT_KERNEL(qmvt4_glu, true, DT_BF16)
QMVT_KERNEL(qmvt4_h, false, DT_F16)
QMVT_KERNEL(qmvt4_glu_h, true, DT_F16)
QMVT_KERNEL(qmvt4_s4, false, DT_F32)
QMVT_KERNEL(qmvt4_glu_s4, true, DT_F32)

// dmv: dense matrix-vector, 16-byte loads of W (type WT: 0 f32, 1 bf16, 2 f16).
template <int WT, int R>
__device__ __forceinline__ void dmv(void* y, int ydt, const void* x, int xdt, const void* W, int N, int K,
                                    const int* ids, int nexp, int xdiv, i64 wstride) {
    constexpr int E = WT == 0 ? 4 : 8;
    constexpr int PAD = 4;
    float* smem = dyn_smem;
    float* xs = smem;
    const int C = K / E;
    const int p = blockIdx.y;
    Pair pr = pair_of(p, W, W, W, ids, nexp, xdiv, wstride, 0);
    stage_x<E, PAD, 0>(xs, nullptr, x, pr.xrow * K, xdt, K);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 rowBytes = (i64)K * (WT == 0 ? 4 : 2);
    for (int rg = blockIdx.x * QMV_WARPS + warp; rg * R < N; rg += gridDim.x * QMV_WARPS) {
        const uint4* wr[R];
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            wr[r] = (const uint4*)(pr.W + min(rg * R + r, N - 1) * rowBytes);
            acc[r] = 0.f;
        }
        for (int c = lane; c < C; c += 32) {
            uint4 v[R];
#pragma unroll
            for (int r = 0; r < R; r++) v[r] = __ldg(wr[r] + c);
            const float* xc = xs + c * (E + PAD);
            if (WT == 0) {
                float4 xv = *(const float4*)xc;
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r] += f_of(v[r].x) * xv.x + f_of(v[r].y) * xv.y + f_of(v[r].z) * xv.z + f_of(v[r].w) * xv.w;
            } else {
                float4 x0 = *(const float4*)xc, x1 = *(const float4*)(xc + 4);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    u32 w[4] = {v[r].x, v[r].y, v[r].z, v[r].w};
                    float f[8];
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        if (WT == 1) {
                            f[2 * j] = f_of(w[j] << 16);
                            f[2 * j + 1] = f_of(w[j] & 0xffff0000u);
                        } else {
                            f[2 * j] = h2f((u16)(w[j] & 0xffffu));
                            f[2 * j + 1] = h2f((u16)(w[j] >> 16));
                        }
                    }
                    acc[r] += f[0] * x0.x + f[1] * x0.y + f[2] * x0.z + f[3] * x0.w + f[4] * x1.x + f[5] * x1.y +
                              f[6] * x1.z + f[7] * x1.w;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
        if (lane < R) {
            float v = acc[0];
#pragma unroll
            for (int r = 1; r < R; r++)
                if (lane == r) v = acc[r];
            int row = rg * R + lane;
            if (row < N) stf(y, (i64)p * N + row, ydt, pr.ok ? v : __int_as_float(0x7fc00000));
        }
    }
}

#define DMV_ARGS \
    void *y, int ydt, const void *x, int xdt, const void *W, int N, int K, const int *ids, int nexp, int xdiv, i64 wstride
#define DMV_PASS y, ydt, x, xdt, W, N, K, ids, nexp, xdiv, wstride

extern "C" __global__ void __launch_bounds__(256) dmv_f32(DMV_ARGS) { PDL_ENTRY(); dmv<0, 2>(DMV_PASS); }
extern "C" __global__ void __launch_bounds__(256) dmv_bf16(DMV_ARGS) { PDL_ENTRY(); dmv<1, 2>(DMV_PASS); }
extern "C" __global__ void __launch_bounds__(256) dmv_f16(DMV_ARGS) { PDL_ENTRY(); dmv<2, 2>(DMV_PASS); }

// wval returns element k of weight row n (dense of type wdt when bits = 0).
__device__ __forceinline__ float wval(const char* W, const char* S, const char* B, int sdt, int wdt, int bits,
                                      int group, int K, int n, int k) {
    if (bits == 0) return ldf(W, (i64)n * K + k, wdt);
    const u32* row = (const u32*)W + (i64)n * (K * bits / 32);
    i64 g = (i64)n * (K / group) + k / group;
    return ldf(S, g, sdt) * (float)qval(row, k, bits) + ldf(B, g, sdt);
}

// mv_generic: any bits (or dense of any type), no alignment needed. One warp
// per row, lanes over k.
extern "C" __global__ void __launch_bounds__(256) mv_generic(void* y, int ydt, const void* x, int xdt, const void* W,
                                                              int wdt, const void* S, const void* B, int sdt, int bits,
                                                              int N, int K, int group, const int* ids, int nexp,
                                                              int xdiv, i64 wstride, i64 gstride) { PDL_ENTRY();
    float* smem = dyn_smem;
    const int p = blockIdx.y;
    Pair pr = pair_of(p, W, S, B, ids, nexp, xdiv, wstride, gstride);
    stage_x<1, 0, 0>(smem, nullptr, x, pr.xrow * K, xdt, K);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int n = blockIdx.x * QMV_WARPS + warp; n < N; n += gridDim.x * QMV_WARPS) {
        float acc = 0.f;
        for (int k = lane; k < K; k += 32) acc += wval(pr.W, pr.S, pr.B, sdt, wdt, bits, group, K, n, k) * smem[k];
        acc = warp_sum(acc);
        if (lane == 0) stf(y, (i64)p * N + n, ydt, pr.ok ? acc : __int_as_float(0x7fc00000));
    }
}

// ---------------------------------------------------------------------------
// GEMM for M > 1.

#define BM 64
#define BN 64
#define BK 32
#define LDS_BF (BK + 8) // bf16 row stride in shared memory (conflict-free fragment loads)
#define LDS_F (BK + 1)

struct Tile {
    int e;     // expert (0 for plain)
    int start; // first row in perm (gather) or first token (plain)
    int count; // rows in the tile
};

// gemm_tile reads the block's tile (plain when perm is 0: tokens
// blockIdx.x·BM..; else tiles[blockIdx.x] of moe_sort) and fills its x and y
// row indices (-1 past the tile's count), ending with a barrier.
__device__ __forceinline__ Tile gemm_tile(const int* perm, const int* tiles, int M, int xdiv, int* rowx, int* rowy) {
    Tile t;
    if (perm) {
        t.e = tiles[3 * blockIdx.x];
        t.start = tiles[3 * blockIdx.x + 1];
        t.count = tiles[3 * blockIdx.x + 2];
    } else {
        t.e = 0;
        t.start = blockIdx.x * BM;
        t.count = min(BM, M - t.start);
    }
    const int tid = threadIdx.x;
    if (t.count > 0 && tid < BM) {
        if (tid < t.count) {
            int r = perm ? perm[t.start + tid] : t.start + tid;
            rowx[tid] = r / xdiv;
            rowy[tid] = r;
        } else {
            rowx[tid] = -1;
            rowy[tid] = -1;
        }
    }
    __syncthreads();
    return t;
}

// mma_tile adds the products of one staged BK-slice (x tile xs and W tile
// ws, bf16 rows of stride LDS_BF) to the warp's 32×32 accumulators: four
// warps, a 2×2 grid of 32×32 blocks of the 64×64 tile. The fragments come
// from ldmatrix (rows of 80 bytes: the eight row addresses of a matrix fall
// in distinct banks).
__device__ __forceinline__ void mma_tile(const u16* xs, const u16* ws, float* acc) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 1, wnn = warp & 1;
    // A (x rows): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    const u16* ap = xs + (32 * wm + (lane & 15)) * LDS_BF + 8 * (lane >> 4);
    // B (W rows n): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    const u16* bp = ws + (32 * wnn + (lane & 7) + 8 * (lane >> 4)) * LDS_BF + 8 * ((lane >> 3) & 1);
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        u32 a[2][4], bb[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) ldsm4(a[mt], ap + 16 * mt * LDS_BF + ks);
#pragma unroll
        for (int np = 0; np < 2; np++) ldsm4(bb[np], bp + 16 * np * LDS_BF + ks);
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
                mma_bf16(acc + (mt * 4 + nt) * 4, a[mt][0], a[mt][1], a[mt][2], a[mt][3], bb[nt >> 1][2 * (nt & 1)],
                         bb[nt >> 1][2 * (nt & 1) + 1]);
    }
}

// store_tile writes the warp's tensor-core accumulators to the tile's y rows;
// with up (GLU), gelu(gate)·up of the two products, each rounded to y's type
// first as the unfused sequence stores them.
template <bool GLU = false>
__device__ __forceinline__ void store_tile(void* y, int ydt, int N, int n0, const int* rowy, const float* acc,
                                           const float* up = nullptr) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const int wm = warp >> 1, wnn = warp & 1;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int i = 32 * wm + 16 * mt + g + 8 * h;
                int yr = rowy[i];
                if (yr < 0) continue;
                int n = n0 + 32 * wnn + 8 * nt + 2 * tg;
                const int ci = (mt * 4 + nt) * 4 + 2 * h;
                float v0 = acc[ci], v1 = acc[ci + 1];
                if (GLU) {
                    v0 = gelu_tanh(round_act(v0, ydt)) * round_act(up[ci], ydt);
                    v1 = gelu_tanh(round_act(v1, ydt)) * round_act(up[ci + 1], ydt);
                }
                if (n < N) stf(y, (i64)yr * N + n, ydt, v0);
                if (n + 1 < N) stf(y, (i64)yr * N + n + 1, ydt, v1);
            }
}

// gemm: y[row(i), n] = Σ_k x[xrow(i), k] · W[e][n, k] for the tile's rows i.
// Plain (perm == 0): tile rows are tokens blockIdx.x·BM + i. Gather: tile
// blockIdx.x of tiles[] holds (expert, start, count) and row i is the pair
// perm[start + i] (x row pair / xdiv, y row pair). TC selects tensor cores
// (bf16 operands) or f32 FMAs.
template <bool TC>
__device__ __forceinline__ void gemm(void* y, int ydt, const void* x, int xdt, const void* W, int wdt,
                                     const void* S, const void* B, int sdt, int bits, int M, int N, int K,
                                     int group, const int* perm, const int* tiles, int xdiv, i64 wstride,
                                     i64 gstride, int fast) {
    __shared__ __align__(16) char sm[TC ? 2 * BM * LDS_BF * 2 : 2 * BM * LDS_F * 4];
    __shared__ int rowx[BM], rowy[BM];
    const Tile t = gemm_tile(perm, tiles, M, xdiv, rowx, rowy);
    if (t.count <= 0) return;
    const int n0 = blockIdx.y * BN;
    const char* Wp = (const char*)W + (i64)t.e * wstride;
    const char* Sp = (const char*)S + (i64)t.e * gstride;
    const char* Bp = (const char*)B + (i64)t.e * gstride;
    const int tid = threadIdx.x;

    // Loader assignment: thread tid fills row tid/2, columns (tid&1)·16 .. +16
    // of both the x tile and the W tile.
    const int lr = tid >> 1, lc = (tid & 1) * 16;
    const int xr = rowx[lr];
    const int wn = n0 + lr;

    float accf[TC ? 1 : 32];
    float acc[TC ? 32 : 1];
#pragma unroll
    for (int i = 0; i < (TC ? 32 : 1); i++) acc[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (TC ? 1 : 32); i++) accf[i] = 0.f;

    for (int k0 = 0; k0 < K; k0 += BK) {
        float xv[16], wv[16];
        u32 xraw[8];
        // fast & 1: bf16 x rows 16-byte aligned (tensor-core path copies the raw bits).
        const bool xfast = TC && (fast & 1) && k0 + lc + 16 <= K;
        if (xfast) {
            if (xr >= 0) {
                const uint4* xp = (const uint4*)((const u16*)x + (i64)xr * K + k0 + lc);
                uint4 a = __ldg(xp), b2 = __ldg(xp + 1);
                xraw[0] = a.x; xraw[1] = a.y; xraw[2] = a.z; xraw[3] = a.w;
                xraw[4] = b2.x; xraw[5] = b2.y; xraw[6] = b2.z; xraw[7] = b2.w;
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) xraw[j] = 0;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) {
                int k = k0 + lc + j;
                xv[j] = (xr >= 0 && k < K) ? ldf(x, (i64)xr * K + k, xdt) : 0.f;
            }
        }
        if (wn < N && k0 + lc < K) {
            if (bits == 0) {
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    int k = k0 + lc + j;
                    wv[j] = k < K ? ldf(Wp, (i64)wn * K + k, wdt) : 0.f;
                }
            } else {
                // 16 consecutive values in one group (K and the group are multiples of 32).
                const u32* row = (const u32*)Wp + (i64)wn * (K * bits / 32);
                int kk = k0 + lc;
                i64 gi = (i64)wn * (K / group) + kk / group;
                float s = ldf(Sp, gi, sdt), b = ldf(Bp, gi, sdt);
                if ((fast & 2) && bits == 4) { // 8 aligned bytes; 2^23 + q is exact
                    uint2 q2 = __ldg((const uint2*)(row + kk / 8));
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        wv[j] = fmaf(s, __uint_as_float(0x4b000000u | ((q2.x >> (4 * j)) & 15u)) - 8388608.f, b);
                        wv[8 + j] = fmaf(s, __uint_as_float(0x4b000000u | ((q2.y >> (4 * j)) & 15u)) - 8388608.f, b);
                    }
                } else if ((fast & 2) && bits == 8) {
                    uint4 q4 = __ldg((const uint4*)(row + kk / 4));
                    u32 qw[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        wv[4 * j] = fmaf(s, __uint_as_float(__byte_perm(qw[j], 0x4b000000u, 0x7650)) - 8388608.f, b);
                        wv[4 * j + 1] = fmaf(s, __uint_as_float(__byte_perm(qw[j], 0x4b000000u, 0x7651)) - 8388608.f, b);
                        wv[4 * j + 2] = fmaf(s, __uint_as_float(__byte_perm(qw[j], 0x4b000000u, 0x7652)) - 8388608.f, b);
                        wv[4 * j + 3] = fmaf(s, __uint_as_float(__byte_perm(qw[j], 0x4b000000u, 0x7653)) - 8388608.f, b);
                    }
                } else {
                    u32 bit = (u32)kk * bits;
                    const u32* wp = row + (bit >> 5);
                    u32 off = bit & 31;
                    u64 win = (u64)(wp[0] >> off);
                    int have = 32 - off; // valid bits in win
                    int nextw = 1;
                    const u32 mask = (1u << bits) - 1u;
#pragma unroll
                    for (int j = 0; j < 16; j++) {
                        if (have < bits) { // refill: append the next word above the remaining bits
                            win |= (u64)wp[nextw++] << have;
                            have += 32;
                        }
                        wv[j] = s * (float)((u32)win & mask) + b;
                        win >>= bits;
                        have -= bits;
                    }
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) wv[j] = 0.f;
        }
        __syncthreads(); // previous tile consumed
        if (TC) {
            u16* xs = (u16*)sm;
            u16* ws = xs + BM * LDS_BF;
            u32* xd = (u32*)(xs + lr * LDS_BF + lc);
            u32* wd = (u32*)(ws + lr * LDS_BF + lc);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                xd[j] = xfast ? xraw[j] : pack_bf2(xv[2 * j], xv[2 * j + 1]);
                wd[j] = pack_bf2(wv[2 * j], wv[2 * j + 1]);
            }
        } else {
            float* xs = (float*)sm;
            float* ws = xs + BM * LDS_F;
#pragma unroll
            for (int j = 0; j < 16; j++) {
                xs[lr * LDS_F + lc + j] = xv[j];
                ws[lr * LDS_F + lc + j] = wv[j];
            }
        }
        __syncthreads();
        if (TC) {
            mma_tile((const u16*)sm, (const u16*)sm + BM * LDS_BF, acc);
        } else {
            const float* xs = (const float*)sm;
            const float* ws = xs + BM * LDS_F;
            const int ty = tid >> 4, tx = tid & 15;
#pragma unroll 4
            for (int k = 0; k < BK; k++) {
                float av[8], bv[4];
#pragma unroll
                for (int i = 0; i < 8; i++) av[i] = xs[(ty * 8 + i) * LDS_F + k];
#pragma unroll
                for (int j = 0; j < 4; j++) bv[j] = ws[(tx * 4 + j) * LDS_F + k];
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) accf[i * 4 + j] = fmaf(av[i], bv[j], accf[i * 4 + j]);
            }
        }
    }
    // Epilogue.
    if (TC) {
        store_tile(y, ydt, N, n0, rowy, acc);
    } else {
        const int ty = tid >> 4, tx = tid & 15;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int yr = rowy[ty * 8 + i];
            if (yr < 0) continue;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int n = n0 + tx * 4 + j;
                if (n < N) stf(y, (i64)yr * N + n, ydt, accf[i * 4 + j]);
            }
        }
    }
}

// dequant16 writes 16 consecutive values of one group (4 bits: 8 bytes in
// w.x, w.y; 8 bits: 16 bytes) as bf16 pairs: s·q + b in f32, rounded once.
template <int BITS>
__device__ __forceinline__ void dequant16(uint4 w, float s, float b, u32 (&d)[8]) {
    if (BITS == 4) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const u32 q = j < 2 ? w.x : w.y;
            const int sh = 16 * (j & 1);
            float v[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[i] = fmaf(s, __uint_as_float(0x4b000000u | ((q >> (sh + 4 * i)) & 15u)) - 8388608.f, b);
            d[2 * j] = pack_bf2(v[0], v[1]);
            d[2 * j + 1] = pack_bf2(v[2], v[3]);
        }
    } else {
        const u32 qw[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float v[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[i] = fmaf(s, __uint_as_float(__byte_perm(qw[j], 0x4b000000u, 0x7650 + i)) - 8388608.f, b);
            d[2 * j] = pack_bf2(v[0], v[1]);
            d[2 * j + 1] = pack_bf2(v[2], v[3]);
        }
    }
}

// bf2_fma returns a·b + c on bf16 pairs, rounded once.
__device__ __forceinline__ u32 bf2_fma(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// dequant16_bf writes 16 4-bit values (w.x, w.y) of one group with bf16
// scale s and bias b (raw bits) as bf16 pairs in the order of nibbles (0,
// 4), (1, 5), (2, 6), (3, 7) of each word: one LOP3 makes the pair 128 + q
// exactly (0x4300 is 128 in bf16, whose last mantissa bit is then 1), one
// bf16 FMA subtracts the 128 exactly and one computes s·q + b, rounded once
// (the f32 path rounds to f32 first; they differ only where that double
// rounding does). The x slice is staged in the same order (perm8).
__device__ __forceinline__ void dequant16_bf(uint4 w, u32 s, u32 b, u32 (&d)[8]) {
    const u32 s2 = s | (s << 16), b2 = b | (b << 16);
    const u32 one = 0x3f803f80u, m128 = 0xc300c300u;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const u32 q = h ? w.y : w.x;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 v;
            asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(v) : "r"(q >> (4 * j)), "n"(0x000f000f), "n"(0x43004300));
            d[4 * h + j] = bf2_fma(bf2_fma(v, one, m128), s2, b2);
        }
    }
}

// perm8 reorders the eight bf16 values of v as (0, 4, 1, 5, 2, 6, 3, 7).
__device__ __forceinline__ uint4 perm8(uint4 v) {
    return make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                      __byte_perm(v.y, v.w, 0x7632));
}

// gemm_q: the tensor-core GEMM for bf16 x rows and 4- or 8-bit weights, all
// 16-byte aligned, K a multiple of BK (the backend checks). Software
// pipelined: each thread holds the raw loads (x, packed weights, scale and
// bias) of the next two BK-slices in registers while the warps multiply the
// current one, and the staged slices alternate between two shared-memory
// buffers, so a step has one barrier and its loads were issued two steps
// before. Same tile layout and results as gemm<true>.
struct GemmRaw {
    uint4 xa, xb, w, w2;
    u32 s, b, s2, b2;
};

// GLU: two weights of one format (W2, S2, B2: up), y = gelu(x·Wᵀ)·(x·W2ᵀ);
// each block stages and multiplies both W tiles against one x tile.
template <int BITS, bool BFS, bool GLU>
__device__ __forceinline__ void gemm_q(void* y, int ydt, const void* x, const void* W, const void* S,
                                       const void* B, int sdt, int M, int N, int K, int group, const int* perm,
                                       const int* tiles, int xdiv, i64 wstride, i64 gstride, int ksplit, float* part,
                                       const void* W2, const void* S2, const void* B2) {
    constexpr int NW = GLU ? 2 : 1; // W tiles
    __shared__ __align__(16) u16 sm[2][(BM + NW * BN) * LDS_BF];
    __shared__ int rowx[BM], rowy[BM];
    const Tile t = gemm_tile(perm, tiles, M, xdiv, rowx, rowy);
    if (t.count <= 0) return;
    const int n0 = blockIdx.y * BN;
    const int tid = threadIdx.x;
    const int lr = tid >> 1, lc = (tid & 1) * 16; // this thread stages row lr, columns lc..lc+15
    const int xr = rowx[lr];
    const int wn = n0 + lr;
    const uint4* xp = xr >= 0 ? (const uint4*)((const u16*)x + (i64)xr * K + lc) : nullptr;
    const bool wok = wn < N;
    const i64 wofs = (i64)t.e * wstride + (i64)(wok ? wn : 0) * (K * BITS / 8) + lc * BITS / 8;
    const char* wrow = (const char*)W + wofs;
    const char* wrow2 = GLU ? (const char*)W2 + wofs : nullptr;
    const i64 g0 = (i64)(wok ? wn : 0) * (K / group);
    const char* Sp = (const char*)S + (i64)t.e * gstride;
    const char* Bp = (const char*)B + (i64)t.e * gstride;
    const char* Sp2 = GLU ? (const char*)S2 + (i64)t.e * gstride : nullptr;
    const char* Bp2 = GLU ? (const char*)B2 + (i64)t.e * gstride : nullptr;
    const int gshift = __ffs(group) - 1; // group is 32, 64 or 128
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // Unsigned offsets and shifts only: a signed division here costs more
    // than the dequantization.
    auto load = [&](GemmRaw& r, u32 k0) {
        r.xa = xp ? __ldg(xp + (k0 >> 3)) : zero;
        r.xb = xp ? __ldg(xp + (k0 >> 3) + 1) : zero;
        if (wok) {
            auto one = [&](const char* wr, const char* sp, const char* bp, uint4& w, u32& sv, u32& bv) {
                if (BITS == 4) {
                    uint2 q = __ldg((const uint2*)(wr + (k0 >> 1)));
                    w = make_uint4(q.x, q.y, 0, 0);
                } else {
                    w = __ldg((const uint4*)(wr + k0));
                }
                const i64 gi = g0 + ((k0 + (u32)lc) >> gshift);
                if (BFS) {
                    sv = __ldg((const u16*)sp + gi);
                    bv = __ldg((const u16*)bp + gi);
                } else {
                    sv = ldraw(sp, gi, sdt);
                    bv = ldraw(bp, gi, sdt);
                }
            };
            one(wrow, Sp, Bp, r.w, r.s, r.b);
            if (GLU) one(wrow2, Sp2, Bp2, r.w2, r.s2, r.b2);
        }
    };
    auto stage = [&](const GemmRaw& r, u16* buf) {
        uint4* xd = (uint4*)(buf + lr * LDS_BF + lc);
        xd[0] = BFS ? perm8(r.xa) : r.xa;
        xd[1] = BFS ? perm8(r.xb) : r.xb;
#pragma unroll
        for (int i = 0; i < NW; i++) {
            uint4* wd = (uint4*)(buf + (BM + i * BN + lr) * LDS_BF + lc);
            if (wok) {
                const uint4 w = i ? r.w2 : r.w;
                const u32 sv = i ? r.s2 : r.s, bv = i ? r.b2 : r.b;
                u32 d[8];
                if (BFS)
                    dequant16_bf(w, sv, bv, d);
                else
                    dequant16<BITS>(w, rawf(sv, sdt), rawf(bv, sdt), d);
                wd[0] = make_uint4(d[0], d[1], d[2], d[3]);
                wd[1] = make_uint4(d[4], d[5], d[6], d[7]);
            } else {
                wd[0] = zero;
                wd[1] = zero;
            }
        }
    };
    float acc[32], acc2[GLU ? 32 : 1];
#pragma unroll
    for (int i = 0; i < 32; i++) acc[i] = 0.f;
#pragma unroll
    for (int i = 0; i < (GLU ? 32 : 1); i++) acc2[i] = 0.f;
    // Split K (ksplit > 1, plain tiles only): block z takes the slices
    // [z·S/ksplit, (z+1)·S/ksplit) and stores its f32 partial products in
    // part[z]; gemm_splitk_sum adds them up in order.
    const int S0 = K / BK, z = blockIdx.z;
    const int s0 = z * S0 / ksplit, nk = (z + 1) * S0 / ksplit - s0;
    const u32 kb = (u32)s0 * BK;
    GemmRaw r[2];
    load(r[0], kb);
    if (nk > 1) load(r[1], kb + BK);
    stage(r[0], sm[0]);
    if (nk > 2) load(r[0], kb + 2 * BK);
    __syncthreads();
    // Step it multiplies buffer it&1 while registers hold slices it+1 (slot
    // (it+1)&1) and it+2 (slot it&1); it stages it+1 and loads it+3 into the
    // freed slot. Unrolled by two so the slots are compile-time indices.
    for (int it = 0; it < nk; it += 2) {
#pragma unroll
        for (int d = 0; d < 2; d++) {
            const int st = it + d;
            if (st < nk) {
                mma_tile(sm[d], sm[d] + BM * LDS_BF, acc);
                if (GLU) mma_tile(sm[d], sm[d] + (BM + BN) * LDS_BF, acc2);
                if (st + 1 < nk) stage(r[1 - d], sm[1 - d]);
                if (st + 3 < nk) load(r[1 - d], kb + (st + 3) * BK);
                __syncthreads();
            }
        }
    }
    if (GLU)
        store_tile<true>(y, ydt, N, n0, rowy, acc, acc2);
    else if (ksplit > 1)
        store_tile(part + (i64)z * M * N, DT_F32, N, n0, rowy, acc);
    else
        store_tile(y, ydt, N, n0, rowy, acc);
}

// gemm_splitk_sum: y[i] = Σ_z part[z][i] over the ksplit partial products of
// a split-K gemm_q (n = M·N values), in order.
extern "C" __global__ void gemm_splitk_sum(void* y, int ydt, const float* part, int ksplit, i64 n) { PDL_ENTRY();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float v = 0.f;
        for (int z = 0; z < ksplit; z++) v += part[z * n + i];
        stf(y, i, ydt, v);
    }
}

#define GEMM_ARGS                                                                                            \
    void *y, int ydt, const void *x, int xdt, const void *W, int wdt, const void *S, const void *B, int sdt, \
        int bits, int M, int N, int K, int group, const int *perm, const int *tiles, int xdiv, i64 wstride,  \
        i64 gstride, int fast
#define GEMM_PASS y, ydt, x, xdt, W, wdt, S, B, sdt, bits, M, N, K, group, perm, tiles, xdiv, wstride, gstride, fast

extern "C" __global__ void __launch_bounds__(128) gemm_tc(GEMM_ARGS) { PDL_ENTRY(); gemm<true>(GEMM_PASS); }
extern "C" __global__ void __launch_bounds__(128) gemm_f32(GEMM_ARGS) { PDL_ENTRY(); gemm<false>(GEMM_PASS); }

#define GEMMQ_ARGS                                                                                                  \
    void *y, int ydt, const void *x, const void *W, const void *S, const void *B, int sdt, int M, int N, int K,       \
        int group, const int *perm, const int *tiles, int xdiv, i64 wstride, i64 gstride, int ksplit, float *part, \
        const void *W2, const void *S2, const void *B2
#define GEMMQ_PASS y, ydt, x, W, S, B, sdt, M, N, K, group, perm, tiles, xdiv, wstride, gstride, ksplit, part, W2, S2, B2
#define GEMMQ_KERNEL(NAME, BITS, BFS, GLU) \
    extern "C" __global__ void __launch_bounds__(128) NAME(GEMMQ_ARGS) { PDL_ENTRY(); gemm_q<BITS, BFS, GLU>(GEMMQ_PASS); }
GEMMQ_KERNEL(gemm_q4, 4, false, false)
GEMMQ_KERNEL(gemm_q8, 8, false, false)
// 4 bits with bf16 scales and biases (MLX's default): bf16 pair dequantization.
GEMMQ_KERNEL(gemm_q4b, 4, true, false)
// Gate and up with the gated GeLU (NormGLU of several tokens).
GEMMQ_KERNEL(gemm_q4_glu, 4, false, true)
GEMMQ_KERNEL(gemm_q8_glu, 8, false, true)
GEMMQ_KERNEL(gemm_q4b_glu, 4, true, true)

// moe_sort groups the P = M·k (token, slot) pairs by expert with a counting
// sort in one block: perm lists the pairs expert by expert, and tiles[3·t]
// = (expert, start in perm, count ≤ BM) for t < maxTiles (count 0 past the
// last tile). Pairs with an id outside [0, E) are dropped. Needs 3·E ints
// of dynamic shared memory.
extern "C" __global__ void moe_sort(const int* ids, int P, int E, int* perm, int* tiles, int maxTiles) { PDL_ENTRY();
    int* sh = (int*)dyn_smem;
    int* cnt = sh;
    int* off = sh + E;
    int* toff = sh + 2 * E;
    __shared__ int total;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int e = ids[p];
        if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, to = 0;
        for (int e = 0; e < E; e++) {
            off[e] = o;
            toff[e] = to;
            o += cnt[e];
            to += (cnt[e] + BM - 1) / BM;
        }
        total = to;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int n = cnt[e];
        for (int i = 0; i * BM < n; i++) {
            int t = toff[e] + i;
            if (t < maxTiles) {
                tiles[3 * t] = e;
                tiles[3 * t + 1] = off[e] + i * BM;
                tiles[3 * t + 2] = min(BM, n - i * BM);
            }
        }
    }
    for (int t = total + threadIdx.x; t < maxTiles; t += blockDim.x) {
        tiles[3 * t] = 0;
        tiles[3 * t + 1] = 0;
        tiles[3 * t + 2] = 0;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = off[e]; // cursors
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int e = ids[p];
        if (e >= 0 && e < E) perm[atomicAdd(&cnt[e], 1)] = p;
    }
}
