// Decode attention over a (ring) KV cache and the MoE router's top-k.

// AttnParams describes an attention dispatch.
struct AttnParams {
    int heads;     // query heads
    int kv_heads;  // key/value heads (GQA)
    int head_dim;  // D ≤ 512
    int window;    // sliding window (0: full attention)
    float scale;   // multiplies q·k
    int capacity;  // cache slots; position p lives in slot p mod capacity
};

// attention computes out[t, h] = softmax(scale·q[t,h]·Kᵀ)·V over the keys at
// positions max(0, pos-window+1)..pos (pos = positions[t]) in f32. One
// threadgroup of 4 SIMD-groups per (head, row): SIMD-group g takes keys
// start+g, start+g+4, ...; its 32 lanes split the head dimension, reduce q·k
// with simd_sum and keep an online softmax (running max, sum and output); the
// four partial results are merged through threadgroup memory.
kernel void attention(
    device const uchar* q [[buffer(0)]],
    device const uchar* kc [[buffer(1)]],
    device const uchar* vc [[buffer(2)]],
    device const int* positions [[buffer(3)]],
    device uchar* out [[buffer(4)]],
    constant AttnParams& p [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    threadgroup float tm[4];
    threadgroup float ts[4];
    threadgroup float to[4][512];

    const uint h = tgid.x;
    const uint t = tgid.y;
    const uint d = uint(p.head_dim);
    const uint kvh = h / uint(p.heads / p.kv_heads);
    const uint kv_cols = uint(p.kv_heads) * d;
    const int pos = positions[t];
    const int start = p.window > 0 ? max(0, pos - p.window + 1) : 0;

    float qv[16];
    float o[16];
    const ulong qbase = (ulong(t) * uint(p.heads) + h) * d;
    for (uint i = 0; i < 16; i++) {
        const uint c = lane + 32 * i;
        qv[i] = c < d ? ld(q, DT_X, qbase + c) : 0.0f;
        o[i] = 0.0f;
    }
    float m = -1.0e30f;
    float s = 0.0f;
    for (int j = start + int(sg); j <= pos; j += 4) {
        const ulong row = ulong(j % p.capacity) * kv_cols + ulong(kvh) * d;
        float part = 0.0f;
        for (uint i = 0; i < 16; i++) {
            const uint c = lane + 32 * i;
            if (c < d) {
                part += qv[i] * ld(kc, DT_W, row + c);
            }
        }
        const float score = simd_sum(part) * p.scale;
        const float mn = max(m, score);
        const float co = exp(m - mn);
        const float cn = exp(score - mn);
        s = s * co + cn;
        for (uint i = 0; i < 16; i++) {
            const uint c = lane + 32 * i;
            if (c < d) {
                o[i] = o[i] * co + cn * ld(vc, DT_W, row + c);
            }
        }
        m = mn;
    }
    if (lane == 0) {
        tm[sg] = m;
        ts[sg] = s;
    }
    for (uint i = 0; i < 16; i++) {
        const uint c = lane + 32 * i;
        if (c < d) {
            to[sg][c] = o[i];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float mx = tm[0];
    for (uint g = 1; g < 4; g++) {
        mx = max(mx, tm[g]);
    }
    float total = 0.0f;
    float f[4];
    for (uint g = 0; g < 4; g++) {
        f[g] = exp(tm[g] - mx);
        total += ts[g] * f[g];
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (uint c = tid; c < d; c += 128) {
        float v = 0.0f;
        for (uint g = 0; g < 4; g++) {
            v += to[g][c] * f[g];
        }
        st(out, DT_Y, qbase + c, v * inv);
    }
}

// RouterParams describes a router_topk dispatch.
struct RouterParams {
    int experts;   // E ≤ 512
    int k;         // top-k ≤ 32
    int has_scale; // 1 if per_expert_scale is bound
};

// router_topk takes one row of router logits per SIMD-group (threadgroup of
// 32): softmax over the E experts (lane-strided, simd_max/simd_sum), then k
// rounds of a parallel arg-max (simd_max of the value, simd_min of the index
// among the lanes holding it: ties go to the lower index); the k
// probabilities are renormalized to sum 1 and multiplied by
// per_expert_scale[id] (DT_S).
kernel void router_topk(
    device const uchar* logits [[buffer(0)]],
    device const uchar* per_expert_scale [[buffer(1)]],
    device int* ids [[buffer(2)]],
    device float* weights [[buffer(3)]],
    constant RouterParams& p [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint e = uint(p.experts);
    const ulong base = ulong(tgid.x) * e;
    float v[16];
    float mx = -3.0e38f;
    for (uint j = 0; j < 16; j++) {
        const uint c = lane + 32 * j;
        v[j] = c < e ? ld(logits, DT_X, base + c) : -3.0e38f;
        mx = max(mx, v[j]);
    }
    mx = simd_max(mx);
    float s = 0.0f;
    for (uint j = 0; j < 16; j++) {
        const uint c = lane + 32 * j;
        v[j] = c < e ? exp(v[j] - mx) : -1.0f;
        s += c < e ? v[j] : 0.0f;
    }
    s = simd_sum(s);
    for (uint j = 0; j < 16; j++) {
        if (v[j] >= 0.0f) {
            v[j] /= s;
        }
    }
    int my_id = 0;
    float my_p = 0.0f;
    for (int r = 0; r < p.k; r++) {
        float bv = -1.0f;
        int bi = 0x7fffffff;
        for (uint j = 0; j < 16; j++) {
            if (v[j] > bv) {
                bv = v[j];
                bi = int(lane + 32 * j);
            }
        }
        const float gv = simd_max(bv);
        const int gi = simd_min(bv == gv ? bi : 0x7fffffff);
        if (gi != 0x7fffffff && uint(gi) % 32 == lane) { // (none left only with NaN logits)
            v[uint(gi) / 32] = -1.0f;
        }
        if (uint(r) == lane) {
            my_id = gi;
            my_p = gv;
        }
    }
    const float total = simd_sum(int(lane) < p.k ? my_p : 0.0f);
    if (int(lane) < p.k) {
        float wgt = total > 0.0f ? my_p / total : 0.0f;
        if (p.has_scale != 0) {
            wgt *= ld(per_expert_scale, DT_S, ulong(my_id));
        }
        const ulong o = ulong(tgid.x) * uint(p.k) + lane;
        ids[o] = my_id;
        weights[o] = wgt;
    }
}
