// select.cu: the k greatest values of each row of an f32 matrix and their
// columns (kernels.Selector), for sampling from a decode step's best logits
// without reading the whole vocabulary on the host. Every value becomes a
// 64-bit key whose order is the selection's: the value's order bits (NaN
// below every number, -0 as +0), then the complement of its column, so that
// of equal values the lower column sorts first. Blocks sort tiles of a row
// with a bitonic network in shared memory and keep their k best keys; one
// block a row then sorts the tiles' survivors the same way.


__device__ __forceinline__ u64 topk_key(float v, unsigned col) {
    unsigned u = __float_as_uint(v);
    unsigned o;
    if (v != v) {
        o = 0; // NaN: below -inf, whose order bits are 0x007fffff
    } else {
        if (v == 0.f) u = 0; // -0 ranks as +0
        o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
    return ((u64)o << 32) | (u64)(~col);
}

// bitonic_desc sorts a[0..n) (n a power of two) in descending order; every
// thread of the block takes part, and the last barrier publishes the result.
__device__ __forceinline__ void bitonic_desc(u64* a, int n) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
                const int lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
                const int hi = lo + stride;
                const u64 x = a[lo], y = a[hi];
                if ((lo & size) == 0 ? x < y : x > y) {
                    a[lo] = y;
                    a[hi] = x;
                }
            }
            __syncthreads();
        }
    }
}

// topk_tiles: block (t, r) sorts tile t (S columns, a power of two; the
// columns past N as keys of 0, below every value) of row r of x [M, N] and
// writes its k best keys to part[(r·T + t)·k ..], T = gridDim.x.
extern "C" __global__ void topk_tiles(const float* x, int N, int k, int S, u64* part) { PDL_ENTRY();
    u64* sk = (u64*)dyn_smem;
    const int t = blockIdx.x, r = blockIdx.y;
    const float* xr = x + (i64)r * N;
    for (int i = threadIdx.x; i < S; i += blockDim.x) {
        const i64 col = (i64)t * S + i;
        sk[i] = col < N ? topk_key(xr[col], (unsigned)col) : 0ull;
    }
    __syncthreads();
    bitonic_desc(sk, S);
    u64* out = part + ((i64)r * gridDim.x + t) * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = sk[i];
}

// topk_merge: block r sorts the n = T·k keys its row's tiles kept (padded
// with keys of 0 to P, a power of two) and writes the k best as values
// [M, k] and columns [M, k].
extern "C" __global__ void topk_merge(const u64* part, int n, int P, int k, float* vals, int* ids) { PDL_ENTRY();
    u64* sk = (u64*)dyn_smem;
    const int r = blockIdx.x;
    const u64* in = part + (i64)r * n;
    for (int i = threadIdx.x; i < P; i += blockDim.x) sk[i] = i < n ? in[i] : 0ull;
    __syncthreads();
    bitonic_desc(sk, P);
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const u64 key = sk[i];
        const unsigned o = (unsigned)(key >> 32);
        float v;
        if (o == 0) v = __uint_as_float(0x7fc00000u); // NaN
        else v = __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
        vals[(i64)r * k + i] = v;
        ids[(i64)r * k + i] = (int)~(unsigned)key;
    }
}
