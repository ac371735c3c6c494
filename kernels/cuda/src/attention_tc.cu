// attention_tc.cu: prefill attention on tensor cores for bf16 queries, bf16
// KV caches and bf16 output (the flash-attention scheme). Block (query tile
// of TC_BQ rows, query head h, output half z) stages its rows of q in shared
// memory and walks the keys of its rows' visible ranges (their union, each
// row masked to its own: positions may be anything, the cache a ring of cap
// slots) in tiles of TC_BKV keys: S = q·kᵀ with mma from ldmatrix fragments,
// an online softmax in f32 on the accumulators (each thread holds two rows
// of its warp's sixteen; the four threads of a row meet by shuffles), then
// O += P·V with P rounded to bf16 straight from the S accumulators and V's
// fragments from ldmatrix .trans. Head dims up to 256 give a block all of
// them; 512 is split in two output halves (z), each block recomputing S.
// Keys and values come by cp.async, the values' copy overlapping the S
// products.

#define TC_BQ 64
#define TC_BKV 32

template <int D>
__device__ __forceinline__ void attn_tc(u16* out, const u16* q, const u16* kc, const u16* vc, const int* pos, int T,
                                        int H, int KVH, int cap, int window, float scale) {
    constexpr int DO = D < 256 ? D : 256; // output columns a block
    constexpr int LQ = D + 8;             // row strides in shared memory (bf16): ldmatrix without bank conflicts
    constexpr int LV = DO + 8;
    u16* Qs = (u16*)dyn_smem;    // [TC_BQ][LQ]
    u16* Ks = Qs + TC_BQ * LQ;   // [TC_BKV][LQ]
    u16* Vs = Ks + TC_BKV * LQ;  // [TC_BKV][LV]: this block's output columns
    __shared__ int rpos[TC_BQ]; // the rows' positions (-1: past T)
    const int t0 = blockIdx.x * TC_BQ, h = blockIdx.y, d0 = blockIdx.z * DO;
    const int kvh = h / (H / KVH);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, tg = lane & 3;
    const i64 HD = (i64)H * D, KD = (i64)KVH * D;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    if (tid < TC_BQ) rpos[tid] = t0 + tid < T ? pos[t0 + tid] : -1;
    for (int i = tid; i < TC_BQ * (D / 8); i += blockDim.x) {
        const int r = i / (D / 8), c = i % (D / 8);
        u16* dst = Qs + r * LQ + c * 8;
        if (t0 + r < T)
            cp_async16(dst, q + (t0 + r) * HD + (i64)h * D + c * 8);
        else
            *(uint4*)dst = zero;
    }
    cp_async_commit();
    __syncthreads();
    // The keys any row of the block sees.
    int lo = 0x7fffffff, hi = -1;
    for (int r = 0; r < TC_BQ; r++) {
        const int p = rpos[r];
        if (p >= 0) {
            lo = min(lo, window > 0 ? max(0, p - window + 1) : 0);
            hi = max(hi, p);
        }
    }
    // This thread's rows: ra (accumulator elements 0, 1) and rb (2, 3).
    const int ra = warp * 16 + g, rb = ra + 8;
    const int pa = rpos[ra], pb = rpos[rb];
    const int loa = window > 0 ? max(0, pa - window + 1) : 0;
    const int lob = window > 0 ? max(0, pb - window + 1) : 0;

    float o[DO / 8][4];
#pragma unroll
    for (int j = 0; j < DO / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] = 0.f;
    float ma = NEG_INF, mb = NEG_INF, la = 0.f, lb = 0.f;

    for (int kb = lo; kb <= hi; kb += TC_BKV) {
        __syncthreads(); // the previous tile's K and V are consumed
        for (int i = tid; i < TC_BKV * (D / 8); i += blockDim.x) {
            const int r = i / (D / 8), c = i % (D / 8), key = kb + r;
            u16* dst = Ks + r * LQ + c * 8;
            if (key <= hi)
                cp_async16(dst, kc + (i64)(key % cap) * KD + (i64)kvh * D + c * 8);
            else
                *(uint4*)dst = zero;
        }
        cp_async_commit();
        for (int i = tid; i < TC_BKV * (DO / 8); i += blockDim.x) {
            const int r = i / (DO / 8), c = i % (DO / 8), key = kb + r;
            u16* dst = Vs + r * LV + c * 8;
            if (key <= hi)
                cp_async16(dst, vc + (i64)(key % cap) * KD + (i64)kvh * D + d0 + c * 8);
            else
                *(uint4*)dst = zero;
        }
        cp_async_commit();
        cp_async_wait<1>(); // q (the first time) and this tile's keys
        __syncthreads();

        // S = q·kᵀ: the warp's 16 rows by TC_BKV keys (n-tiles of 8 keys).
        float s[TC_BKV / 8][4];
#pragma unroll
        for (int j = 0; j < TC_BKV / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.f;
        const u16* qa = Qs + (warp * 16 + (lane & 15)) * LQ + 8 * (lane >> 4);
        const u16* kbp = Ks + ((lane & 7) + 8 * (lane >> 4)) * LQ + 8 * ((lane >> 3) & 1);
#pragma unroll 4
        for (int ks = 0; ks < D; ks += 16) {
            u32 a[4];
            ldsm4(a, qa + ks);
#pragma unroll
            for (int np = 0; np < TC_BKV / 16; np++) {
                u32 b[4];
                ldsm4(b, kbp + np * 16 * LQ + ks);
                mma_bf16(s[2 * np], a[0], a[1], a[2], a[3], b[0], b[1]);
                mma_bf16(s[2 * np + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
            }
        }
        // Online softmax: mask, scale, new maxima, rescale O and l.
        float mxa = NEG_INF, mxb = NEG_INF;
#pragma unroll
        for (int j = 0; j < TC_BKV / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = kb + 8 * j + 2 * tg + (e & 1);
                const bool vis = e < 2 ? (pa >= 0 && key >= loa && key <= pa) : (pb >= 0 && key >= lob && key <= pb);
                s[j][e] = vis ? s[j][e] * scale : NEG_INF;
                if (e < 2)
                    mxa = fmaxf(mxa, s[j][e]);
                else
                    mxb = fmaxf(mxb, s[j][e]);
            }
#pragma unroll
        for (int sh = 1; sh < 4; sh <<= 1) {
            mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, sh));
            mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, sh));
        }
        const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
        const float ua = mna == NEG_INF ? 0.f : mna, ub = mnb == NEG_INF ? 0.f : mnb; // all masked so far: no scaling
        const float alphaa = expf(ma - ua), alphab = expf(mb - ub);
        ma = mna;
        mb = mnb;
        float suma = 0.f, sumb = 0.f;
        u32 pf[TC_BKV / 16][4]; // P as A fragments, one per 16 keys
#pragma unroll
        for (int j = 0; j < TC_BKV / 8; j++) {
            const float p0 = expf(s[j][0] - ua), p1 = expf(s[j][1] - ua);
            const float p2 = expf(s[j][2] - ub), p3 = expf(s[j][3] - ub);
            suma += p0 + p1;
            sumb += p2 + p3;
            pf[j >> 1][(j & 1) * 2] = pack_bf2(p0, p1);
            pf[j >> 1][(j & 1) * 2 + 1] = pack_bf2(p2, p3);
        }
#pragma unroll
        for (int sh = 1; sh < 4; sh <<= 1) {
            suma += __shfl_xor_sync(0xffffffffu, suma, sh);
            sumb += __shfl_xor_sync(0xffffffffu, sumb, sh);
        }
        la = la * alphaa + suma;
        lb = lb * alphab + sumb;
#pragma unroll
        for (int j = 0; j < DO / 8; j++) {
            o[j][0] *= alphaa;
            o[j][1] *= alphaa;
            o[j][2] *= alphab;
            o[j][3] *= alphab;
        }
        cp_async_wait<0>(); // this tile's values
        __syncthreads();
        // O += P·V: k = the tile's keys, n = output columns.
        const u16* vbp = Vs + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LV + 8 * (lane >> 4);
#pragma unroll
        for (int kk = 0; kk < TC_BKV / 16; kk++) {
            // A fragment registers: (row g, keys 2tg..), (row g+8, ..), (row g, keys 8+2tg..), (row g+8, ..).
            const u32 a0 = pf[kk][0], a1 = pf[kk][1], a2 = pf[kk][2], a3 = pf[kk][3];
#pragma unroll
            for (int np = 0; np < DO / 16; np++) {
                u32 b[4];
                ldsm4_trans(b, vbp + kk * 16 * LV + np * 16);
                mma_bf16(o[2 * np], a0, a1, a2, a3, b[0], b[1]);
                mma_bf16(o[2 * np + 1], a0, a1, a2, a3, b[2], b[3]);
            }
        }
    }
    // Output: O / l, bf16, this block's columns.
    const float ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
#pragma unroll
    for (int j = 0; j < DO / 8; j++) {
        const int d = d0 + 8 * j + 2 * tg;
        if (t0 + ra < T) *(u32*)(out + (t0 + ra) * HD + (i64)h * D + d) = pack_bf2(o[j][0] * ia, o[j][1] * ia);
        if (t0 + rb < T) *(u32*)(out + (t0 + rb) * HD + (i64)h * D + d) = pack_bf2(o[j][2] * ib, o[j][3] * ib);
    }
}

#define ATTN_TC_ARGS                                                                                            \
    u16 *out, const u16 *q, const u16 *kc, const u16 *vc, const int *pos, int T, int H, int KVH, int cap, int window, \
        float scale
#define ATTN_TC_PASS out, q, kc, vc, pos, T, H, KVH, cap, window, scale
extern "C" __global__ void __launch_bounds__(128) attn_tc_d128(ATTN_TC_ARGS) { PDL_ENTRY(); attn_tc<128>(ATTN_TC_PASS); }
extern "C" __global__ void __launch_bounds__(128) attn_tc_d256(ATTN_TC_ARGS) { PDL_ENTRY(); attn_tc<256>(ATTN_TC_PASS); }
extern "C" __global__ void __launch_bounds__(128) attn_tc_d512(ATTN_TC_ARGS) { PDL_ENTRY(); attn_tc<512>(ATTN_TC_PASS); }
