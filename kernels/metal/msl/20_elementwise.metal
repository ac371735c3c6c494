// Elementwise kernels, norms, softmax, RoPE and the KV cache store.

// EltParams describes an elementwise dispatch over n elements.
struct EltParams {
    uint n;  // elements
    float s; // scalar: the factor of scale, the cap of softcap
};

// add computes y = a + b (a: DT_X, b: DT_W).
kernel void add(
    device const uchar* a [[buffer(0)]],
    device const uchar* b [[buffer(1)]],
    device uchar* y [[buffer(2)]],
    constant EltParams& p [[buffer(3)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid < p.n) {
        st(y, DT_Y, gid, ld(a, DT_X, gid) + ld(b, DT_W, gid));
    }
}

// scale computes y = s·x.
kernel void scale(
    device const uchar* x [[buffer(0)]],
    device uchar* y [[buffer(1)]],
    constant EltParams& p [[buffer(2)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid < p.n) {
        st(y, DT_Y, gid, p.s * ld(x, DT_X, gid));
    }
}

// softcap computes y = s·tanh(x/s).
kernel void softcap(
    device const uchar* x [[buffer(0)]],
    device uchar* y [[buffer(1)]],
    constant EltParams& p [[buffer(2)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid < p.n) {
        st(y, DT_Y, gid, p.s * precise::tanh(ld(x, DT_X, gid) / p.s));
    }
}

// gelu_mul computes y = gelu_tanh(gate)·up (gate: DT_X, up: DT_W).
kernel void gelu_mul(
    device const uchar* gate [[buffer(0)]],
    device const uchar* up [[buffer(1)]],
    device uchar* y [[buffer(2)]],
    constant EltParams& p [[buffer(3)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid < p.n) {
        st(y, DT_Y, gid, gelu_tanh(ld(gate, DT_X, gid)) * ld(up, DT_W, gid));
    }
}

// RowParams describes a row-wise dispatch (one threadgroup per row).
struct RowParams {
    int n;          // row width
    float eps;      // RMSNorm epsilon
    int has_weight; // RMSNorm: 1 if w is bound
};

// rms_norm computes y = x·(mean(x²)+eps)^-½·w per row in f32 (x may be y).
kernel void rms_norm(
    device const uchar* x [[buffer(0)]],
    device const uchar* w [[buffer(1)]],
    device uchar* y [[buffer(2)]],
    constant RowParams& p [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint3 ntg [[threads_per_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    threadgroup float part[32];
    const uint n = uint(p.n);
    const ulong base = ulong(tgid.x) * n;
    const uint nsg = (ntg.x + 31) / 32;

    float ss = 0.0f;
    for (uint i = tid; i < n; i += ntg.x) {
        const float v = ld(x, DT_X, base + i);
        ss += v * v;
    }
    ss = simd_sum(ss);
    if (lane == 0) {
        part[sg] = ss;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (uint i = 0; i < nsg; i++) {
        total += part[i];
    }
    const float inv = rsqrt(total / float(n) + p.eps);
    for (uint i = tid; i < n; i += ntg.x) {
        float v = ld(x, DT_X, base + i) * inv;
        if (p.has_weight != 0) {
            v *= ld(w, DT_W, i);
        }
        st(y, DT_Y, base + i, v);
    }
}

// softmax normalizes each row in f32 (one threadgroup per row).
kernel void softmax(
    device const uchar* x [[buffer(0)]],
    device uchar* y [[buffer(1)]],
    constant RowParams& p [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint3 ntg [[threads_per_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    threadgroup float part[32];
    const uint n = uint(p.n);
    const ulong base = ulong(tgid.x) * n;
    const uint nsg = (ntg.x + 31) / 32;

    float mx = -3.0e38f;
    for (uint i = tid; i < n; i += ntg.x) {
        mx = max(mx, ld(x, DT_X, base + i));
    }
    mx = simd_max(mx);
    if (lane == 0) {
        part[sg] = mx;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    mx = part[0];
    for (uint i = 1; i < nsg; i++) {
        mx = max(mx, part[i]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    float s = 0.0f;
    for (uint i = tid; i < n; i += ntg.x) {
        s += exp(ld(x, DT_X, base + i) - mx);
    }
    s = simd_sum(s);
    if (lane == 0) {
        part[sg] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (uint i = 0; i < nsg; i++) {
        total += part[i];
    }
    const float inv = 1.0f / total;
    for (uint i = tid; i < n; i += ntg.x) {
        st(y, DT_Y, base + i, exp(ld(x, DT_X, base + i) - mx) * inv);
    }
}

// RopeParams describes a rope dispatch over x [rows, heads, 2·half].
struct RopeParams {
    int rows;  // T
    int heads; // heads per row
    int half_dim; // D/2
};

// rope rotates the pairs (i, i+D/2) of x in place by positions[t]·inv_freq[i]
// (NeoX half rotation). One thread per pair.
kernel void rope(
    device uchar* x [[buffer(0)]],
    device const int* positions [[buffer(1)]],
    device const float* inv_freq [[buffer(2)]],
    constant RopeParams& p [[buffer(3)]],
    uint gid [[thread_position_in_grid]])
{
    const uint half_d = uint(p.half_dim);
    const uint total = uint(p.rows) * uint(p.heads) * half_d;
    if (gid >= total) {
        return;
    }
    const uint i = gid % half_d;
    const uint rh = gid / half_d; // row·heads + head
    const uint t = rh / uint(p.heads);
    const float f = inv_freq[i];
    if (f == 0.0f) {
        return;
    }
    const float a = float(positions[t]) * f;
    const float c = precise::cos(a);
    const float s = precise::sin(a);
    const ulong base = ulong(rh) * (2 * half_d);
    const float x1 = ld(x, DT_X, base + i);
    const float x2 = ld(x, DT_X, base + i + half_d);
    st(x, DT_X, base + i, x1 * c - x2 * s);
    st(x, DT_X, base + i + half_d, x2 * c + x1 * s);
}

// StoreParams describes a store_kv dispatch.
struct StoreParams {
    int rows;     // T
    int cols;     // KVHeads·HeadDim
    int capacity; // cache slots
};

// store_kv writes src[t, :] (DT_X) into cache slot positions[t] mod capacity
// (DT_Y). One thread per element.
kernel void store_kv(
    device const uchar* src [[buffer(0)]],
    device const int* positions [[buffer(1)]],
    device uchar* cache [[buffer(2)]],
    constant StoreParams& p [[buffer(3)]],
    uint2 gid [[thread_position_in_grid]])
{
    const uint c = gid.x;
    const uint t = gid.y;
    if (c >= uint(p.cols) || t >= uint(p.rows)) {
        return;
    }
    int slot = positions[t] % p.capacity;
    if (slot < 0) {
        slot += p.capacity;
    }
    st(cache, DT_Y, ulong(slot) * uint(p.cols) + c, ld(src, DT_X, ulong(t) * uint(p.cols) + c));
}
