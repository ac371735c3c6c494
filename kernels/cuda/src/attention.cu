// attention.cu: attention of T query rows over a KV cache, split over the
// keys ("flash decoding"). Block (kv head, query row t, split z) walks the
// key chunks z, z+Z, ... of its row's visible range, for all the G = H/KVH
// query heads that share the kv head (so K and V are read once for them),
// with an online softmax in f32. With Z > 1 the partial results go to a
// scratch buffer and attn_combine merges them. Where (kv head, row, split)
// blocks would leave most SMs idle (few keys, few kv heads: a global layer
// in decode), the G heads are split over gridDim.x / KVH blocks, each
// reading the kv head's keys for its share of the heads.

#define ATT_THREADS 128
#define ATT_CH 64

template <typename CT> struct CacheT;
template <> struct CacheT<float> {
    static constexpr int V = 4; // values per 16-byte load
    static constexpr int ES = 4; // bytes per value
    __device__ static void load(const void* p, float* f) {
        float4 v = *(const float4*)p;
        f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
    }
    __device__ static float one(const void* p, i64 i) { return ((const float*)p)[i]; }
};
struct bf16_t {};
struct f16_t {};
template <> struct CacheT<bf16_t> {
    static constexpr int V = 8;
    static constexpr int ES = 2;
    __device__ static void load(const void* p, float* f) {
        uint4 v = *(const uint4*)p;
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) { f[2 * j] = __uint_as_float(w[j] << 16); f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u); }
    }
    __device__ static float one(const void* p, i64 i) { return bf2f(((const u16*)p)[i]); }
};
template <> struct CacheT<f16_t> {
    static constexpr int V = 8;
    static constexpr int ES = 2;
    __device__ static void load(const void* p, float* f) {
        uint4 v = *(const uint4*)p;
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) { f[2 * j] = h2f((u16)(w[j] & 0xffffu)); f[2 * j + 1] = h2f((u16)(w[j] >> 16)); }
    }
    __device__ static float one(const void* p, i64 i) { return h2f(((const u16*)p)[i]); }
};

// Phase 1 (scores): thread (j = key of the chunk, half) reads half of key
// j's row (8 16-byte loads in flight) and dots it with every head's q; the
// two halves meet in shared memory (S and S1). Phase 3 (P·V), VEC: thread
// (key group, column) owns V consecutive columns (one 16-byte load a key)
// of the keys of its group, up to 16 keys' loads in flight, and the groups
// are summed through shared memory at the end; otherwise (too many
// registers, or D/V not a power of two dividing 128) thread over d, ND
// scalar loads a key, eight keys in flight.
template <typename CT, int GMAX, bool VEC>
__device__ __forceinline__ void attn(void* out, int odt, const void* q, int qdt, const void* kc, const void* vc,
                                     const int* pos, int H, int KVH, int D, int cap, int window, float scale, int Z,
                                     float* part) {
    typedef CacheT<CT> C;
    constexpr int ND = 4; // D <= 512 = ND·ATT_THREADS
    constexpr int V = C::V;
    constexpr int NV = VEC ? V : 1;
    constexpr int KU = (GMAX * V <= 16) ? 16 : 8; // VEC: keys' loads in flight
    float* sm = dyn_smem;
    const int HS = gridDim.x / KVH;     // blocks sharing a kv head's heads
    const int G = H / KVH / HS;         // this block's heads: h0, h0 + 1, ...
    float* qs = sm;                     // [G][D]
    float* S = qs + G * D;              // [G][ATT_CH]
    float* S1 = S + G * ATT_CH;         // [G][ATT_CH]: second half's dots
    float* mrow = S1 + G * ATT_CH;      // [G]
    float* lrow = mrow + GMAX;          // [G]
    float* alpha = lrow + GMAX;         // [G]
    float* R = alpha + GMAX;            // [ATT_THREADS·V]: VEC's group sums
    const int kvh = blockIdx.x / HS, t = blockIdx.y, z = blockIdx.z;
    const int h0 = (int)blockIdx.x * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int p = pos[t];
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    const int nkeys = p - lo + 1;
    const int nch = (nkeys + ATT_CH - 1) / ATT_CH;
    const int HD = H * D, KD = KVH * D;
    const int TR = D / V, KG = ATT_THREADS / TR; // VEC: threads a key row, key groups
    const int grp = tid / TR, col = (tid % TR) * V;

    for (int i = tid; i < G * D; i += ATT_THREADS) qs[i] = ldf(q, (i64)t * HD + (i64)h0 * D + i, qdt);
    if (tid < GMAX) { mrow[tid] = NEG_INF; lrow[tid] = 0.f; }
    float acc[GMAX][VEC ? NV : ND];
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int i = 0; i < (VEC ? NV : ND); i++) acc[g][i] = 0.f;
    __syncthreads();

    for (int ch = z; ch < nch; ch += Z) {
        const int kb = lo + ch * ATT_CH;
        const int nk = min(ATT_CH, p - kb + 1);
        // Phase 1: scores.
        {
            const int j = tid & (ATT_CH - 1), half = tid >> 6;
            const int nvec = D / V, vlo = half ? nvec / 2 : 0, vhi = half ? nvec : nvec / 2;
            float dot[GMAX];
#pragma unroll
            for (int g = 0; g < GMAX; g++) dot[g] = 0.f;
            if (j < nk) {
                int slot = (kb + j) % cap;
                const char* krow = (const char*)kc + ((i64)slot * KD + (i64)kvh * D) * C::ES;
                for (int c0 = vlo; c0 < vhi; c0 += 8) {
                    float kf[8][V];
#pragma unroll
                    for (int u = 0; u < 8; u++) C::load(krow + (i64)min(c0 + u, vhi - 1) * V * C::ES, kf[u]);
#pragma unroll
                    for (int u = 0; u < 8; u++) {
                        if (c0 + u < vhi) {
#pragma unroll
                            for (int g = 0; g < GMAX; g++) {
                                if (g < G) {
                                    const float4* qq = (const float4*)(qs + g * D + (c0 + u) * V);
#pragma unroll
                                    for (int v4 = 0; v4 < V / 4; v4++) {
                                        float4 qv = qq[v4];
                                        dot[g] = fmaf(qv.x, kf[u][4 * v4], dot[g]);
                                        dot[g] = fmaf(qv.y, kf[u][4 * v4 + 1], dot[g]);
                                        dot[g] = fmaf(qv.z, kf[u][4 * v4 + 2], dot[g]);
                                        dot[g] = fmaf(qv.w, kf[u][4 * v4 + 3], dot[g]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            float* Sh = half ? S1 : S;
#pragma unroll
            for (int g = 0; g < GMAX; g++)
                if (g < G) Sh[g * ATT_CH + j] = j < nk ? dot[g] * scale : (half ? 0.f : NEG_INF);
        }
        __syncthreads();
        // Phase 2: online softmax statistics, one warp per head.
        for (int g = warp; g < G; g += ATT_THREADS / 32) {
            float s0 = S[g * ATT_CH + lane] + S1[g * ATT_CH + lane];
            float s1 = S[g * ATT_CH + lane + 32] + S1[g * ATT_CH + lane + 32];
            float cm = warp_max(fmaxf(s0, s1));
            float mold = mrow[g];
            float mnew = fmaxf(mold, cm);
            float p0 = s0 == NEG_INF ? 0.f : expf(s0 - mnew);
            float p1 = s1 == NEG_INF ? 0.f : expf(s1 - mnew);
            S[g * ATT_CH + lane] = p0;
            S[g * ATT_CH + lane + 32] = p1;
            float ps = warp_sum(p0 + p1);
            if (lane == 0) {
                float a = mold == NEG_INF ? 0.f : expf(mold - mnew);
                alpha[g] = a;
                lrow[g] = lrow[g] * a + ps;
                mrow[g] = mnew;
            }
        }
        __syncthreads();
        // Phase 3: acc = acc·alpha + P·V.
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g < G) {
                float a = alpha[g];
#pragma unroll
                for (int i = 0; i < (VEC ? NV : ND); i++) acc[g][i] *= a;
            }
        }
        if constexpr (VEC) {
            // Keys grp, grp+KG, ...: KU loads in flight (clamped key; keys
            // past nk have p = 0 from phase 2).
            for (int j0 = grp; j0 < nk; j0 += KU * KG) {
                float v[KU][NV];
#pragma unroll
                for (int u = 0; u < KU; u++) {
                    int j = min(j0 + u * KG, nk - 1);
                    i64 vbase = (i64)((kb + j) % cap) * KD + (i64)kvh * D + col;
                    C::load((const char*)vc + vbase * C::ES, v[u]);
                }
#pragma unroll
                for (int u = 0; u < KU; u++) {
                    int j = j0 + u * KG;
                    if (j < nk) {
#pragma unroll
                        for (int g = 0; g < GMAX; g++) {
                            if (g < G) {
                                float pj = S[g * ATT_CH + j];
#pragma unroll
                                for (int i = 0; i < NV; i++) acc[g][i] = fmaf(pj, v[u][i], acc[g][i]);
                            }
                        }
                    }
                }
            }
        } else {
            // Eight keys' V loads in flight per thread, unconditional (clamped
            // key and column; keys past nk have p = 0 from phase 2).
            for (int j0 = 0; j0 < nk; j0 += 8) {
                float v[8][ND];
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    i64 vbase = (i64)((kb + min(j0 + u, nk - 1)) % cap) * KD + (i64)kvh * D;
#pragma unroll
                    for (int i = 0; i < ND; i++) v[u][i] = C::one(vc, vbase + min(tid + ATT_THREADS * i, D - 1));
                }
#pragma unroll
                for (int u = 0; u < 8; u++) {
#pragma unroll
                    for (int g = 0; g < GMAX; g++) {
                        if (g < G) {
                            float pj = S[g * ATT_CH + j0 + u];
#pragma unroll
                            for (int i = 0; i < ND; i++) acc[g][i] = fmaf(pj, v[u][i], acc[g][i]);
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
    // Output.
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g >= G) continue;
        int h = h0 + g;
        float o[ND];
        if constexpr (VEC) {
            // Sum the key groups' columns: R[grp][col..col+V).
#pragma unroll
            for (int i = 0; i < NV; i++) R[grp * D + col + i] = acc[g][i];
            __syncthreads();
#pragma unroll
            for (int i = 0; i < ND; i++) {
                int d = tid + ATT_THREADS * i;
                o[i] = 0.f;
                if (d < D)
                    for (int k = 0; k < KG; k++) o[i] += R[k * D + d];
            }
            __syncthreads();
        } else {
#pragma unroll
            for (int i = 0; i < ND; i++) o[i] = acc[g][i];
        }
        if (Z == 1) {
            float inv = lrow[g] > 0.f ? 1.f / lrow[g] : 0.f;
#pragma unroll
            for (int i = 0; i < ND; i++) {
                int d = tid + ATT_THREADS * i;
                if (d < D) stf(out, (i64)t * HD + (i64)h * D + d, odt, o[i] * inv);
            }
        } else {
            float* pp = part + (((i64)t * H + h) * Z + z) * (D + 2);
#pragma unroll
            for (int i = 0; i < ND; i++) {
                int d = tid + ATT_THREADS * i;
                if (d < D) pp[d] = o[i];
            }
            if (tid == 0) { pp[D] = mrow[g]; pp[D + 1] = lrow[g]; }
        }
    }
}

#define ATT_ARGS                                                                                             \
    void *out, int odt, const void *q, int qdt, const void *kc, const void *vc, const int *pos, int H, int KVH, \
        int D, int cap, int window, float scale, int Z, float *part
#define ATT_PASS out, odt, q, qdt, kc, vc, pos, H, KVH, D, cap, window, scale, Z, part

// The module is compiled once per cache type: CACHE_T is float, bf16_t or f16_t.
#ifndef CACHE_T
#define CACHE_T bf16_t
#endif
// VEC phase 3 where its registers fit (GMAX·V <= 64) and D/V is a power of
// two dividing ATT_THREADS (a block-uniform branch).
template <typename CT, int G>
__device__ __forceinline__ void attn_any(ATT_ARGS) {
    constexpr int V = CacheT<CT>::V;
    const int TR = D / V;
    if constexpr (G * V <= 64) {
        if (TR <= ATT_THREADS && (TR & (TR - 1)) == 0 && D % V == 0) {
            attn<CT, G, true>(ATT_PASS);
            return;
        }
    }
    attn<CT, G, false>(ATT_PASS);
}
#define ATT_KERNEL(NAME, G) \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) NAME(ATT_ARGS) { PDL_ENTRY(); attn_any<CACHE_T, G>(ATT_PASS); }
ATT_KERNEL(attn_g1, 1)
ATT_KERNEL(attn_g2, 2)
ATT_KERNEL(attn_g4, 4)
ATT_KERNEL(attn_g8, 8)
ATT_KERNEL(attn_g16, 16)

// attn_weights puts the weight exp(m_z - M) of each of the Z splits of the
// partials pp into c (shared memory) and returns 1/L, L = Σ weight·sum. The
// threads read the Z maxima and sums at once (a loop over them was a chain
// of Z dependent loads: 11 us for 16 splits).
__device__ __forceinline__ float attn_weights(const float* pp, float* c, int D, int Z, float* red) {
    float M = NEG_INF;
    for (int z = threadIdx.x; z < Z; z += blockDim.x) {
        float m = pp[z * (D + 2) + D];
        c[z] = m;
        M = fmaxf(M, m);
    }
    M = block_max(M, red);
    float L = 0.f;
    for (int z = threadIdx.x; z < Z; z += blockDim.x) {
        float m = c[z];
        float e = m != NEG_INF ? expf(m - M) : 0.f;
        c[z] = e;
        L += e * pp[z * (D + 2) + D + 1];
    }
    L = block_sum(L, red); // its barriers also publish c
    return L > 0.f ? 1.f / L : 0.f;
}

// attn_combine merges the Z partial results of each (head, row): grid (H,
// T, ⌈D/32⌉), each block 32 columns of one head and row, thread (q, c) =
// (tid / 32, tid % 32) summing the splits z ≡ q (mod 4) of its column,
// eight loads in flight, the four sums added in shared memory; 128 threads,
// dynamic shared memory Z floats. (With one block a head and row, a global
// layer at 8192 keys, 128 splits of 512 values, read 512 partials a thread
// at eight a round trip: 66 µs against 50 for the attention.)
extern "C" __global__ void attn_combine(void* out, int odt, const float* part, int H, int D, int Z) { PDL_ENTRY();
    __shared__ float red[32];
    __shared__ float sums[4][32];
    float* c = dyn_smem; // [Z]: weight of split z
    const int h = blockIdx.x, t = blockIdx.y;
    const float* pp = part + ((i64)t * H + h) * Z * (D + 2);
    const float inv = attn_weights(pp, c, D, Z, red);
    const int q = threadIdx.x >> 5, lane = threadIdx.x & 31, d = blockIdx.z * 32 + lane;
    float a = 0.f;
    if (d < D) {
        int z = q;
        for (; z + 28 < Z; z += 32) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = pp[(z + 4 * u) * (D + 2) + d];
#pragma unroll
            for (int u = 0; u < 8; u++)
                if (c[z + 4 * u] != 0.f) a += c[z + 4 * u] * v[u];
        }
        for (; z < Z; z += 4)
            if (c[z] != 0.f) a += c[z] * pp[z * (D + 2) + d];
    }
    sums[q][lane] = a;
    __syncthreads();
    if (q == 0 && d < D) stf(out, ((i64)t * H + h) * D + d, odt, ((sums[0][lane] + sums[1][lane]) + (sums[2][lane] + sums[3][lane])) * inv);
}
