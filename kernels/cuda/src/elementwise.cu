// elementwise.cu: norms, RoPE, activations, softmax, router, embedding, KV
// stores and the MoE combine. All math is f32; loads and stores convert from
// and to each tensor's own type (see ldf/stf).

// rmsnorm: one block per row. y = x * rsqrt(mean(x^2) + eps) [* w].
extern "C" __global__ void rmsnorm(void* y, int ydt, const void* x, int xdt, const void* w, int wdt,
                                   int cols, float eps) {
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
extern "C" __global__ void rope(void* x, int dt, const int* pos, const void* invf, int fdt, int heads, int D) {
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

__device__ __forceinline__ float gelu_tanh(float g) {
    const float k0 = 0.7978845608028654f; // sqrt(2/pi)
    return 0.5f * g * (1.f + tanhf(k0 * (g + 0.044715f * g * g * g)));
}

extern "C" __global__ void gelu_mul(void* y, int ydt, const void* g, int gdt, const void* u, int udt, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, gelu_tanh(ldf(g, i, gdt)) * ldf(u, i, udt));
}

extern "C" __global__ void add(void* y, int ydt, const void* a, int adt, const void* b, int bdt, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, ldf(a, i, adt) + ldf(b, i, bdt));
}

extern "C" __global__ void scale(void* y, int ydt, const void* x, int xdt, float s, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, s * ldf(x, i, xdt));
}

extern "C" __global__ void softcap(void* y, int ydt, const void* x, int xdt, float c, i64 n) {
    float inv = 1.f / c;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        stf(y, i, ydt, c * tanhf(ldf(x, i, xdt) * inv));
}

// softmax: one block per row, f32 inside.
extern "C" __global__ void softmax(void* y, int ydt, const void* x, int xdt, int cols) {
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
extern "C" __global__ void moe_combine(void* y, int ydt, const void* x, int xdt, const float* w, int k, int N) {
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
                                 int sdt, int bits, int group, const int* ids, int V, int N, float scale) {
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
extern "C" __global__ void store_kv(void* cache, int cdt, const void* src, int sdt, const int* pos, int cols, int cap) {
    int t = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    int p = pos[t];
    int slot = p % cap;
    if (slot < 0) slot += cap;
    stf(cache, (i64)slot * cols + c, cdt, ldf(src, (i64)t * cols + c, sdt));
}

// router_topk: one warp per row of logits [M, E] (E <= 1024). Writes the top
// k experts of softmax(logits) (ties: lower index) and their renormalized
// probabilities times pes[id] (if pes is set).
extern "C" __global__ void router_topk(float* wout, int* iout, const void* logits, int ldt, const void* pes, int pdt,
                                       int M, int E, int k) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= M) return;
    float v[32];
    float m = NEG_INF;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? ldf(logits, (i64)row * E + e, ldt) : NEG_INF;
        m = fmaxf(m, v[i]);
    }
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? expf(v[i] - m) : -1.f;
        if (e < E) s += v[i];
    }
    s = warp_sum(s);
    float inv = 1.f / s;
#pragma unroll
    for (int i = 0; i < 32; i++) v[i] = v[i] >= 0.f ? v[i] * inv : -1.f;
    u32 taken = 0;
    float tot = 0.f, mine = 0.f;
    int myid = -1;
    for (int j = 0; j < k; j++) {
        float bv = -2.f;
        int bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < 32; i++) {
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
