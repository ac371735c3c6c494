// The k greatest values of each row of an f32 matrix and their columns
// (kernels.Selector). Every value becomes a 64-bit key whose order is the
// selection's: the value's order bits (NaN below every number, -0 as +0),
// then the complement of its column, so that of equal values the lower
// column sorts first. topk_level sorts tiles of TOPK_TILE keys of a row
// with a bitonic network in threadgroup memory and keeps each tile's k
// best; the host runs it on the row's values, then on the kept keys, until
// one tile is left, and topk_out writes that tile's k best.

#define TOPK_TILE 2048

// TopKParams describes a topk_level or topk_out dispatch.
struct TopKParams {
    int n;      // values (level 0) or keys of a row
    int k;      // kept a tile
    int values; // 1: the input is the f32 row itself (level 0)
};

inline ulong topk_key(float v, uint col) {
    uint u = as_type<uint>(v);
    uint o = 0u; // NaN: below -inf, whose order bits are 0x007fffff
    if (v == v) {
        if (v == 0.0f) {
            u = 0u; // -0 ranks as +0
        }
        o = (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
    }
    return (ulong(o) << 32) | ulong(~col);
}

// topk_level: threadgroup (t, r) sorts tile t of row r of in (TOPK_TILE
// keys; those past n as 0, below every value) and writes its k best keys to
// out[(r·T + t)·k ..], T = threadgroups_per_grid.x.
kernel void topk_level(
    device const uchar* in [[buffer(0)]],
    device ulong* out [[buffer(1)]],
    constant TopKParams& p [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint3 tgpg [[threadgroups_per_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint3 ntg [[threads_per_threadgroup]])
{
    threadgroup ulong sk[TOPK_TILE];
    const uint t = tgid.x, r = tgid.y;
    const ulong n = ulong(p.n);
    for (uint i = tid; i < TOPK_TILE; i += ntg.x) {
        const ulong col = ulong(t) * TOPK_TILE + i;
        ulong key = 0;
        if (col < n) {
            if (p.values != 0) {
                key = topk_key(((device const float*)in)[ulong(r) * n + col], uint(col));
            } else {
                key = ((device const ulong*)in)[ulong(r) * n + col];
            }
        }
        sk[i] = key;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint size = 2; size <= TOPK_TILE; size <<= 1) {
        for (uint stride = size >> 1; stride > 0; stride >>= 1) {
            for (uint i = tid; i < TOPK_TILE / 2; i += ntg.x) {
                const uint lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
                const uint hi = lo + stride;
                const ulong x = sk[lo], y = sk[hi];
                if ((lo & size) == 0 ? x < y : x > y) {
                    sk[lo] = y;
                    sk[hi] = x;
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
    }
    const uint k = uint(p.k);
    for (uint i = tid; i < k; i += ntg.x) {
        out[(ulong(r) * tgpg.x + t) * k + i] = sk[i];
    }
}

// topk_out writes the k keys of each row of keys [M, k] (the last level's
// one tile, best first) as values [M, k] and columns [M, k]; one thread a
// key.
kernel void topk_out(
    device const ulong* keys [[buffer(0)]],
    device float* vals [[buffer(1)]],
    device int* ids [[buffer(2)]],
    constant TopKParams& p [[buffer(3)]],
    uint3 gid [[thread_position_in_grid]])
{
    const ulong i = ulong(gid.y) * uint(p.k) + gid.x;
    if (gid.x < uint(p.k)) {
        const ulong key = keys[i];
        const uint o = uint(key >> 32);
        float v = as_type<float>(0x7fc00000u); // NaN
        if (o != 0u) {
            v = as_type<float>((o & 0x80000000u) != 0u ? (o & 0x7fffffffu) : ~o);
        }
        vals[i] = v;
        ids[i] = int(~uint(key));
    }
}
