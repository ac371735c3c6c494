// elementwise.cu: norms, RoPE, activations, softmax, router, embedding, KV
// stores and the MoE combine. All math is f32; loads and stores convert from
// and to each tensor's own type (see ldf/stf).

// rmsnorm: one block per row. y = x * rsqrt(mean(x^2) + eps) [* w].
extern "C" __global__ void rmsnorm(void* y, int ydt, const void* x, int xdt, const void* w, int wdt,
                                   int cols, float eps) { PDL_ENTRY();
    __shared__ float red[32];
    i64 base = (i64)blockIdx.x * cols;
    float ss = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ldf(x, base + i, xdt);
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ldf(x, base + i, xdt) * r;
        if (w) v *= ldf(w, i, wdt);
        stf(y, base + i, ydt, v);
    }
}

// rope: x [T, heads, D] in place; block per (t, head), thread per pair.
extern "C" __global__ void rope(void* x, int dt, const int* pos, const void* invf, int fdt, int heads, int D) { PDL_ENTRY();
    int t = blockIdx.x / heads;
    i64 base = (i64)blockIdx.x * D;
    int half = D / 2;
    float p = (float)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float f = ldf(invf, i, fdt);
        if (f == 0.f) continue;
        float s, c;
        sincosf(p * f, &s, &c);
        float a = ldf(x, base + i, dt), b = ldf(x, base + i + half, dt);
        stf(x, base + i, dt, a * c - b * s);
        stf(x, base + i + half, dt, b * c + a * s);
    }
}

extern "C" __global__ void gelu_mul(void* y, int ydt, const void* g, int gdt, const void* u, int udt, i64 n) { PDL_ENTRY();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, gelu_tanh(ldf(g, i, gdt)) * ldf(u, i, udt));
}

extern "C" __global__ void add(void* y, int ydt, const void* a, int adt, const void* b, int bdt, i64 n) { PDL_ENTRY();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, ldf(a, i, adt) + ldf(b, i, bdt));
}

extern "C" __global__ void scale(void* y, int ydt, const void* x, int xdt, float s, i64 n) { PDL_ENTRY();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, s * ldf(x, i, xdt));
}

extern "C" __global__ void softcap(void* y, int ydt, const void* x, int xdt, float c, i64 n) { PDL_ENTRY();
    float inv = 1.f / c;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, c * tanhf(ldf(x, i, xdt) * inv));
}

// softmax: one block per row, f32 inside.
extern "C" __global__ void softmax(void* y, int ydt, const void* x, int xdt, int cols) { PDL_ENTRY();
    __shared__ float red[32];
    i64 base = (i64)blockIdx.x * cols;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, ldf(x, base + i, xdt));
    m = block_max(m, red);
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(ldf(x, base + i, xdt) - m);
    s = block_sum(s, red);
    float inv = 1.f / s;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) stf(y, base + i, ydt, expf(ldf(x, base + i, xdt) - m) * inv);
}

// moe_combine: y[m, n] = sum_j w[m, j] * x[m, j, n]; grid (ceil(N/256), M).
extern "C" __global__ void moe_combine(void* y, int ydt, const void* x, int xdt, const float* w, int k, int N) { PDL_ENTRY();
    int m = blockIdx.y;
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float acc = 0.f;
    for (int j = 0; j < k; j++) acc += w[(i64)m * k + j] * ldf(x, ((i64)m * k + j) * N + n, xdt);
    stf(y, (i64)m * N + n, ydt, acc);
}

// embed: y[m, :] = dequant(table[ids[m], :]) * scale; grid (ceil(N/256), M).
// Dense tables have bits = 0 and type tdt; quantized ones packed words with
// scales/biases of type sdt. An id outside [0, V) yields NaN.
extern "C" __global__ void embed(void* y, int ydt, const void* table, int tdt, const void* sc, const void* bi,
                                 int sdt, int bits, int group, const int* ids, int V, int N, float scale) { PDL_ENTRY();
    int m = blockIdx.y;
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    int id = ids[m];
    float v;
    if (id < 0 || id >= V) {
        v = __int_as_float(0x7fc00000);
    } else if (bits == 0) {
        v = ldf(table, (i64)id * N + n, tdt);
    } else {
        const u32* row = (const u32*)table + (i64)id * (N * bits / 32);
        i64 g = (i64)id * (N / group) + n / group;
        v = ldf(sc, g, sdt) * (float)qval(row, n, bits) + ldf(bi, g, sdt);
    }
    stf(y, (i64)m * N + n, ydt, v * scale);
}

// store_kv: cache[pos[t] mod cap, :] = src[t, :]; grid (ceil(cols/256), T).
extern "C" __global__ void store_kv(void* cache, int cdt, const void* src, int sdt, const int* pos, int cols, int cap) { PDL_ENTRY();
    int t = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    int p = pos[t];
    int slot = p % cap;
    if (slot < 0) slot += cap;
    stf(cache, (i64)slot * cols + c, cdt, ldf(src, (i64)t * cols + c, sdt));
}

// router_topk: one warp per row of logits [M, E] (E <= 32·EPL). Writes the
// top k experts of softmax(logits) (ties: lower index) and their
// renormalized probabilities times pes[id] (if pes is set). Each lane holds
// EPL logits (lane + 32i), so a model of 128 experts walks 4 a lane, not 32,
// in each of the k rounds of the selection.
template <int EPL>
__device__ __forceinline__ void router_topk(float* wout, int* iout, const void* logits, int ldt, const void* pes, int pdt,
                                            int M, int E, int k) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= M) return;
    float v[EPL];
    float m = NEG_INF;
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? ldf(logits, (i64)row * E + e, ldt) : NEG_INF;
        m = fmaxf(m, v[i]);
    }
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? expf(v[i] - m) : -1.f;
        if (e < E) s += v[i];
    }
    s = warp_sum(s);
    float inv = 1.f / s;
#pragma unroll
    for (int i = 0; i < EPL; i++) v[i] = v[i] >= 0.f ? v[i] * inv : -1.f;
    u32 taken = 0;
    float tot = 0.f, mine = 0.f;
    int myid = -1;
    for (int j = 0; j < k; j++) {
        float bv = -2.f;
        int bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            if (!(taken & (1u << i)) && v[i] > bv) { bv = v[i]; bi = lane + 32 * i; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
        tot += bv;
        if (lane == j) { mine = bv; myid = bi; }
    }
    if (lane < k) {
        float wv = mine / tot;
        if (pes) wv *= ldf(pes, myid, pdt);
        wout[(i64)row * k + lane] = wv;
        iout[(i64)row * k + lane] = myid;
    }
}

#define ROUTER_TOPK_KERNEL(NAME, EPL)                                                                        \
    extern "C" __global__ void NAME(float* wout, int* iout, const void* logits, int ldt, const void* pes, int pdt, \
                                    int M, int E, int k) {                                                   \
        PDL_ENTRY();                                                                                         \
        router_topk<EPL>(wout, iout, logits, ldt, pes, pdt, M, E, k);                                         \
    }
ROUTER_TOPK_KERNEL(router_topk4, 4)
ROUTER_TOPK_KERNEL(router_topk8, 8)
ROUTER_TOPK_KERNEL(router_topk32, 32)

// ---------------------------------------------------------------------------
// Fused ops (kernels.Fuser). Each rounds its intermediates to the type the
// unfused sequence stores them in (round_act), so both give the same values
// up to the order of the norms' sums.

// norm_row normalizes buf[0..D) (this block's copy of a row of type dt) in
// place: buf = round(buf·rsqrt(mean(buf²)+eps)·w), w null: no weight. The
// caller has filled buf; ss is this thread's part of Σbuf².
__device__ __forceinline__ void norm_row(float* buf, float ss, int D, const void* w, int wdt, float eps, int dt,
                                         float* red) {
    ss = block_sum(ss, red); // its barriers also publish buf
    const float r = rsqrtf(ss / (float)D + eps);
#pragma unroll 4
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = buf[i] * r;
        if (w) v *= ldf(w, i, wdt);
        buf[i] = round_act(v, dt);
    }
    __syncthreads();
}

// The weights of attn_prep (the head's norm weight, RoPE's inverse
// frequencies) are read into registers before the PDL wait: element i =
// threadIdx.x + j·blockDim.x of each for j < PREP_W (norm) or PREP_F (RoPE,
// i < D/2); the rest, if any (D > PREP_W·blockDim), is read where used.
#define PREP_W 4
#define PREP_F 2

// norm_row_w is norm_row with the first PREP_W·blockDim weights in wr.
__device__ __forceinline__ void norm_row_w(float* buf, float ss, int D, const float* wr, const void* w, int wdt,
                                           float eps, int dt, float* red) {
    ss = block_sum(ss, red); // its barriers also publish buf
    const float r = rsqrtf(ss / (float)D + eps);
#pragma unroll
    for (int j = 0; j < PREP_W; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < D) {
            float v = buf[i] * r;
            if (w) v *= wr[j];
            buf[i] = round_act(v, dt);
        }
    }
    for (int i = threadIdx.x + PREP_W * blockDim.x; i < D; i += blockDim.x) {
        float v = buf[i] * r;
        if (w) v *= ldf(w, i, wdt);
        buf[i] = round_act(v, dt);
    }
    __syncthreads();
}

// rope_store rotates buf (a normed head of D values) by pos·invf and writes
// it to x at xoff (type dt) and, if cache is set, at coff of the cache. fr
// holds the first PREP_F·blockDim inverse frequencies.
__device__ __forceinline__ void rope_one(const float* buf, int i, int half, float f, float p, void* x, i64 xoff, int dt,
                                         void* cache, i64 coff, int cdt) {
    float a = buf[i], b = buf[i + half];
    if (f != 0.f) {
        float s, c;
        sincosf(p * f, &s, &c);
        float a2 = a * c - b * s, b2 = b * c + a * s;
        a = round_act(a2, dt);
        b = round_act(b2, dt);
    }
    stf(x, xoff + i, dt, a);
    stf(x, xoff + i + half, dt, b);
    if (cache) {
        stf(cache, coff + i, cdt, a);
        stf(cache, coff + i + half, cdt, b);
    }
}

__device__ __forceinline__ void rope_store(const float* buf, int D, float p, const float* fr, const void* invf, int fdt,
                                           void* x, i64 xoff, int dt, void* cache, i64 coff, int cdt) {
    const int half = D / 2;
#pragma unroll
    for (int j = 0; j < PREP_F; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < half) rope_one(buf, i, half, fr[j], p, x, xoff, dt, cache, coff, cdt);
    }
    for (int i = threadIdx.x + PREP_F * blockDim.x; i < half; i += blockDim.x)
        rope_one(buf, i, half, ldf(invf, i, fdt), p, x, xoff, dt, cache, coff, cdt);
}

// attn_prep: q_norm + RoPE of q heads; for kv heads v_norm (from the raw k
// when keqv), k_norm + RoPE and the cache stores. Grid (H + KVH or H, T),
// block 128, dynamic shared memory 2·D floats (kv heads: v in the first
// D, k in the second). D is even. The weights are read before the PDL
// wait; a kv head reads its k and v rows together, so each block waits
// for one round trip before its first reduction.
extern "C" __global__ void attn_prep(void* q, int qdt, void* k, int kdt, void* v, int vdt, const void* qn, int qndt,
                                     const void* kn, int kndt, const int* pos, const void* invf, int fdt, void* kc,
                                     void* vc, int cdt, int cap, int H, int KVH, int D, int keqv, float eps) {
    __shared__ float red[32];
    float* buf = dyn_smem;
    const int t = blockIdx.y;
    int hh = blockIdx.x;
    const bool isq = hh < H;
    const void* nw = isq ? qn : kn;
    const int nwdt = isq ? qndt : kndt;
    float wr[PREP_W], fr[PREP_F];
#pragma unroll
    for (int j = 0; j < PREP_W; j++) {
        int i = threadIdx.x + j * blockDim.x;
        wr[j] = (nw && i < D) ? ldf(nw, i, nwdt) : 1.f;
    }
#pragma unroll
    for (int j = 0; j < PREP_F; j++) {
        int i = threadIdx.x + j * blockDim.x;
        fr[j] = i < D / 2 ? ldf(invf, i, fdt) : 0.f;
    }
    PDL_ENTRY();
    const int pt = pos[t];
    const float p = (float)pt;
    if (isq) {
        const i64 off = ((i64)t * H + hh) * D;
        float ss = 0.f;
#pragma unroll 4
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            float a = ldf(q, off + i, qdt);
            buf[i] = a;
            ss += a * a;
        }
        norm_row_w(buf, ss, D, wr, qn, qndt, eps, qdt, red);
        rope_store(buf, D, p, fr, invf, fdt, q, off, qdt, nullptr, 0, cdt);
        return;
    }
    hh -= H;
    const i64 off = ((i64)t * KVH + hh) * D;
    int slot = pt % cap;
    if (slot < 0) slot += cap;
    const i64 coff = (i64)slot * KVH * D + (i64)hh * D;
    float* kbuf = buf + D;
    // v first: it may be the raw k. Both rows are read before either norm.
    const void* src = keqv ? (const void*)k : (const void*)v;
    const int sdt = keqv ? kdt : vdt;
    float sv = 0.f, sk = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float a = ldf(src, off + i, sdt);
        float b = ldf(k, off + i, kdt);
        buf[i] = a;
        kbuf[i] = b;
        sv += a * a;
        sk += b * b;
    }
    norm_row(buf, sv, D, nullptr, 0, eps, vdt, red);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        stf(v, off + i, vdt, buf[i]);
        stf(vc, coff + i, cdt, buf[i]);
    }
    norm_row_w(kbuf, sk, D, wr, kn, kndt, eps, kdt, red);
    rope_store(kbuf, D, p, fr, invf, fdt, k, off, kdt, kc, coff, cdt);
}

// add_rmsnorm: h = round(h + round(rms(a)·w)), then ·scale (if not 1);
// one block per row, cols <= E·blockDim. Every load is issued before the
// first reduction (the weight before the PDL wait, a and h together), so
// the kernel waits for one DRAM round trip instead of three.
// add_rmsnorm_e4: E = 4, at most 768 threads (room for the registers);
// add_rmsnorm: E = EPI_MAX = 8, 1024 threads.
#define EPI_MAX 8

// NormOuts are the normed copies of the new h that add_rmsnorm and
// moe_epilogue write after it (kernels.NormOut): y_i = h·r_i·w_i with r_i
// = rsqrt(mean(h²) + eps_i) over h as stored, then, where scale_i is
// neither 0 nor 1, scale_i times y_i rounded to y_i's type — RMSNorm's
// sums (the same thread count and order) and rounding, then Scale's.
#define NORM_OUTS 3
struct NormOuts {
    char* y[NORM_OUTS];
    const char* w[NORM_OUTS];
    i64 ydt[NORM_OUTS], wdt[NORM_OUTS];
    double eps[NORM_OUTS], scale[NORM_OUTS];
    i64 n;
};

// norm_outs_load puts the weights of O into ows (each thread its own E
// slots per output, in shared memory: no barrier) before the PDL wait.
template <int E>
__device__ __forceinline__ void norm_outs_load(const NormOuts& O, float* ows, int cols) {
    const int tid = threadIdx.x, bd = blockDim.x;
#pragma unroll
    for (int i = 0; i < NORM_OUTS; i++) {
        if (i < (int)O.n && O.w[i]) {
#pragma unroll
            for (int j = 0; j < E; j++) {
                int n = tid + j * bd;
                ows[(i * E + j) * bd + tid] = n < cols ? ldf(O.w[i], n, (int)O.wdt[i]) : 1.f;
            }
        }
    }
}

// norm_outs writes O from hv, the thread's values of the new h as stored.
template <int E>
__device__ __forceinline__ void norm_outs(const NormOuts& O, const float (&hv)[E], const float* ows, int cols, i64 base,
                                          float* red) {
    if (O.n == 0) return;
    const int tid = threadIdx.x, bd = blockDim.x;
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; j++)
        if (tid + j * bd < cols) ss += hv[j] * hv[j];
    ss = block_sum(ss, red);
#pragma unroll
    for (int i = 0; i < NORM_OUTS; i++) {
        if (i < (int)O.n) {
            const float r = rsqrtf(ss / (float)cols + (float)O.eps[i]);
            const float sc = (float)O.scale[i];
            const int ydt = (int)O.ydt[i];
#pragma unroll
            for (int j = 0; j < E; j++) {
                int n = tid + j * bd;
                if (n < cols) {
                    float v = hv[j] * r;
                    if (O.w[i]) v *= ows[(i * E + j) * bd + tid];
                    if (sc != 0.f && sc != 1.f) v = sc * round_act(v, ydt);
                    stf(O.y[i], base + n, ydt, v);
                }
            }
        }
    }
}

template <int E>
__device__ __forceinline__ void add_rmsnorm_t(void* h, int hdt, const void* a, int adt, const void* w, int wdt, int cols,
                                              float eps, float scale, const NormOuts& O) {
    __shared__ float red[32];
    const int tid = threadIdx.x, bd = blockDim.x;
    const i64 base = (i64)blockIdx.x * cols;
    float wv[E], av[E], hv[E];
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        wv[j] = (w && n < cols) ? ldf(w, n, wdt) : 1.f;
    }
    norm_outs_load<E>(O, dyn_smem, cols);
    PDL_ENTRY();
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        av[j] = n < cols ? ldf(a, base + n, adt) : 0.f;
        hv[j] = n < cols ? ldf(h, base + n, hdt) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < E; j++) ss += av[j] * av[j];
    ss = block_sum(ss, red);
    const float r = rsqrtf(ss / (float)cols + eps);
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        if (n < cols) {
            float v = av[j] * r;
            if (w) v *= wv[j];
            v = round_act(v, adt);
            float o = hv[j] + v;
            if (scale != 1.f) o = scale * round_act(o, hdt);
            stf(h, base + n, hdt, o);
            hv[j] = round_act(o, hdt); // as stored
        }
    }
    norm_outs<E>(O, hv, dyn_smem, cols, base, red);
}
extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm(void* h, int hdt, const void* a, int adt, const void* w,
                                                               int wdt, int cols, float eps, float scale, const NormOuts O) {
    add_rmsnorm_t<EPI_MAX>(h, hdt, a, adt, w, wdt, cols, eps, scale, O);
}
extern "C" __global__ void __launch_bounds__(768) add_rmsnorm_e4(void* h, int hdt, const void* a, int adt, const void* w,
                                                                 int wdt, int cols, float eps, float scale, const NormOuts O) {
    add_rmsnorm_t<4>(h, hdt, a, adt, w, wdt, cols, eps, scale, O);
}

// moe_epilogue ends a MoE layer for one row per block (N <= E·blockDim):
// d1 = round(rms(d)·w1), e = round(rms(round(Σ wts·x))·w2), s = round(d1+e),
// h = round(h + round(rms(s)·wf)), then ·scale (if not 1). Types: d, e and s
// of d's type ddt. The three norm weights are read before the PDL wait;
// d, h, the routing weights and (E = 4, k <= 8) all k expert rows are
// issued together, and the combine runs before the first reduction, so
// the whole kernel waits for one DRAM round trip (it was five).
// SW: the norm weights go to dynamic shared memory (3·E·blockDim floats,
// each thread's own slots, so no barrier) instead of 3·E registers, which
// the 768-thread variant cannot spare without spilling.
template <int E, bool SW>
__device__ __forceinline__ void moe_epilogue_t(void* h, int hdt, const void* d, int ddt, const void* x, int xdt,
                                               const float* wts, int k, const void* w1, int wdt1, const void* w2,
                                               int wdt2, const void* wf, int wdtf, int N, float eps, float scale,
                                               const NormOuts& O) {
    __shared__ float red[32];
    const int m = blockIdx.x;
    const int tid = threadIdx.x, bd = blockDim.x;
    const i64 row = (i64)m * N;
    float w1r[SW ? 1 : E], w2r[SW ? 1 : E], wfr[SW ? 1 : E];
    float* w1s = dyn_smem;
    float* w2s = w1s + E * bd;
    float* wfs = w2s + E * bd;
#define EPI_W(a, j) (SW ? a##s[(j) * bd + tid] : a##r[SW ? 0 : (j)])
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        EPI_W(w1, j) = (w1 && n < N) ? ldf(w1, n, wdt1) : 1.f;
        EPI_W(w2, j) = (w2 && n < N) ? ldf(w2, n, wdt2) : 1.f;
        EPI_W(wf, j) = (wf && n < N) ? ldf(wf, n, wdtf) : 1.f;
    }
    float* ows = dyn_smem + (SW ? 3 * E * bd : 0); // the weights of O, after the three above
    norm_outs_load<E>(O, ows, N);
    PDL_ENTRY();
    float dv[E], ev[E], hv[E];
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        dv[j] = n < N ? ldf(d, row + n, ddt) : 0.f;
        hv[j] = n < N ? ldf(h, row + n, hdt) : 0.f;
    }
    if (E <= 4 && k <= 8) {
        float wk[8];
#pragma unroll
        for (int s = 0; s < 8; s++) wk[s] = s < k ? wts[(i64)m * k + s] : 0.f;
        float xv[E][8];
#pragma unroll
        for (int j = 0; j < E; j++) {
            int n = min(tid + j * bd, N - 1);
#pragma unroll
            for (int s = 0; s < 8; s++) xv[j][s] = s < k ? ldf(x, ((i64)m * k + s) * N + n, xdt) : 0.f;
        }
#pragma unroll
        for (int j = 0; j < E; j++) {
            float acc = 0.f;
#pragma unroll
            for (int s = 0; s < 8; s++)
                if (s < k) acc += wk[s] * xv[j][s];
            ev[j] = tid + j * bd < N ? round_act(acc, ddt) : 0.f;
        }
    } else {
#pragma unroll
        for (int j = 0; j < E; j++) {
            int n = tid + j * bd;
            ev[j] = 0.f;
            if (n < N) {
                float acc = 0.f;
                for (int s0 = 0; s0 < k; s0 += 8) { // eight loads in flight, summed in order
                    float xv[8];
#pragma unroll
                    for (int s = 0; s < 8; s++)
                        xv[s] = s0 + s < k ? ldf(x, ((i64)m * k + s0 + s) * N + n, xdt) : 0.f;
#pragma unroll
                    for (int s = 0; s < 8; s++)
                        if (s0 + s < k) acc += wts[(i64)m * k + s0 + s] * xv[s];
                }
                ev[j] = round_act(acc, ddt);
            }
        }
    }
    float ss = 0.f, se = 0.f;
#pragma unroll
    for (int j = 0; j < E; j++) {
        ss += dv[j] * dv[j];
        se += ev[j] * ev[j];
    }
    ss = block_sum(ss, red);
    se = block_sum(se, red);
    const float r1 = rsqrtf(ss / (float)N + eps);
    const float r2 = rsqrtf(se / (float)N + eps);
    float s2 = 0.f;
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        if (n < N) {
            float v = dv[j] * r1;
            if (w1) v *= EPI_W(w1, j);
            float e = ev[j] * r2;
            if (w2) e *= EPI_W(w2, j);
            e = round_act(e, ddt);
            dv[j] = round_act(round_act(v, ddt) + e, ddt);
            s2 += dv[j] * dv[j];
        }
    }
    s2 = block_sum(s2, red);
    const float rf = rsqrtf(s2 / (float)N + eps);
#pragma unroll
    for (int j = 0; j < E; j++) {
        int n = tid + j * bd;
        if (n < N) {
            float f = dv[j] * rf;
            if (wf) f *= EPI_W(wf, j);
            f = round_act(f, ddt);
            float o = hv[j] + f;
            if (scale != 1.f) o = scale * round_act(o, hdt);
            stf(h, row + n, hdt, o);
            hv[j] = round_act(o, hdt); // as stored
        }
    }
    norm_outs<E>(O, hv, ows, N, row, red);
#undef EPI_W
}
#define MOE_EPI_ARGS                                                                                              \
    void *h, int hdt, const void *d, int ddt, const void *x, int xdt, const float *wts, int k, const void *w1,   \
        int wdt1, const void *w2, int wdt2, const void *wf, int wdtf, int N, float eps, float scale, const NormOuts O
#define MOE_EPI_PASS h, hdt, d, ddt, x, xdt, wts, k, w1, wdt1, w2, wdt2, wf, wdtf, N, eps, scale, O
extern "C" __global__ void __launch_bounds__(1024) moe_epilogue(MOE_EPI_ARGS) { moe_epilogue_t<EPI_MAX, false>(MOE_EPI_PASS); }
extern "C" __global__ void __launch_bounds__(768) moe_epilogue_e4(MOE_EPI_ARGS) { moe_epilogue_t<4, true>(MOE_EPI_PASS); }
