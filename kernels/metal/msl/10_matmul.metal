// Matrix-vector and matrix-matrix products with dense or MLX affine-quantized
// weights, for one weight or for the experts selected per row.

// QMVParams describes a qmv dispatch.
struct QMVParams {
    int n;        // output features (rows of W)
    int k;        // input features
    int slots;    // output rows per x row group: top-k slots (1 for a plain matmul)
    int x_shared; // 1: x has one row per m, shared by its slots; 0: one row per (m, slot)
    int experts;  // experts in the 3D weight (0: a 2D weight; ids unused)
    uint w_stride; // bytes between experts in w
    uint s_stride; // bytes between experts in scales and biases
};

// qmv computes y[p, n] = x[row(p)] · W[e(p)][n]ᵀ for the pair p =
// threadgroup_position.y (a row of a plain matmul, or an (m, slot) pair whose
// expert e(p) = ids[p] is read from the device), following MLX's qmv: a
// threadgroup is 2 SIMD-groups of 32 lanes, each SIMD-group computes 4 output
// rows; each lane takes 16 consecutive inputs per 512-wide block, keeps them in
// registers for the 4 rows, accumulates s·Σx·q + b·Σx per quantization group
// in f32, and the row sums are reduced with simd_sum.
kernel void qmv(
    device const uchar* w [[buffer(0)]],
    device const uchar* scales [[buffer(1)]],
    device const uchar* biases [[buffer(2)]],
    device const uchar* x [[buffer(3)]],
    device uchar* y [[buffer(4)]],
    device const int* ids [[buffer(5)]],
    constant QMVParams& p [[buffer(6)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint pair = tgid.y;
    const uint n = uint(p.n);
    const uint k = uint(p.k);
    const ulong xrow = p.x_shared != 0 ? pair / uint(p.slots) : pair;

    int e = 0;
    bool valid = true;
    if (p.experts > 0) {
        e = ids[pair];
        valid = e >= 0 && e < p.experts;
        if (!valid) {
            e = 0;
        }
    }
    device const uchar* we = w + ulong(e) * ulong(p.w_stride);
    device const uchar* se = scales + ulong(e) * ulong(p.s_stride);
    device const uchar* be = biases + ulong(e) * ulong(p.s_stride);

    const uint row0 = tgid.x * 8 + sg * 4;
    const ulong row_bytes = BITS == 0 ? ulong(k) * dt_size(DT_W) : ulong(k) * ulong(BITS) / 8;
    const uint groups = BITS == 0 ? 1 : k / uint(GROUP);
    const uint mask = BITS == 0 ? 0u : (1u << BITS) - 1u;

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (uint k0 = lane * 16; k0 < k; k0 += 512) {
        float xv[16];
        float xsum = 0.0f;
        for (uint i = 0; i < 16; i++) {
            xv[i] = k0 + i < k ? ld(x, DT_X, xrow * k + k0 + i) : 0.0f;
            xsum += xv[i];
        }
        for (uint r = 0; r < 4; r++) {
            const uint row = row0 + r;
            if (row >= n) {
                continue;
            }
            device const uchar* wr = we + ulong(row) * row_bytes;
            if (BITS == 0) {
                float d = 0.0f;
                for (uint i = 0; i < 16; i++) {
                    if (k0 + i < k) {
                        d += xv[i] * ld(wr, DT_W, k0 + i);
                    }
                }
                acc[r] += d;
                continue;
            }
            // 16 values of BITS bits are 2·BITS bytes: BITS aligned ushorts.
            device const ushort* u = (device const ushort*)(wr + k0 * uint(BITS) / 8);
            ushort uv[8];
            for (int j = 0; j < BITS; j++) {
                uv[j] = u[j];
            }
            float qdot = 0.0f;
            for (uint i = 0; i < 16; i++) {
                const uint bit = i * uint(BITS);
                const uint wi = bit >> 4;
                const uint sh = bit & 15;
                uint v = uint(uv[wi]);
                if (sh + uint(BITS) > 16) {
                    v |= uint(uv[wi + 1]) << 16;
                }
                qdot += xv[i] * float((v >> sh) & mask);
            }
            const ulong g = ulong(row) * groups + k0 / uint(GROUP);
            acc[r] += ld(se, DT_S, g) * qdot + ld(be, DT_S, g) * xsum;
        }
    }
    for (uint r = 0; r < 4; r++) {
        const float t = simd_sum(acc[r]);
        const uint row = row0 + r;
        if (lane == 0 && row < n) {
            st(y, DT_Y, ulong(pair) * n + row, valid ? t : 0.0f);
        }
    }
}

// QMMParams describes a qmm dispatch.
struct QMMParams {
    int m; // rows of x and y
    int n; // output features
    int k; // input features
};

// qmm is the tiled prefill matmul y[M,N] = x[M,K]·Wᵀ: a threadgroup of 128
// threads computes a 32×32 tile of y, staging 32-wide slices of x and of the
// dequantized W in threadgroup memory; each thread accumulates 2×4 outputs in
// f32.
kernel void qmm(
    device const uchar* w [[buffer(0)]],
    device const uchar* scales [[buffer(1)]],
    device const uchar* biases [[buffer(2)]],
    device const uchar* x [[buffer(3)]],
    device uchar* y [[buffer(4)]],
    constant QMMParams& p [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float xs[32][33];
    threadgroup float ws[32][33];

    const uint m = uint(p.m);
    const uint n = uint(p.n);
    const uint k = uint(p.k);
    const uint row0 = tgid.y * 32;
    const uint col0 = tgid.x * 32;
    const uint tr = tid / 8; // rows tr, tr+16
    const uint tc = tid % 8; // cols tc, tc+8, tc+16, tc+24
    const uint lr = tid / 4; // staging: row of the tile
    const uint lk = (tid % 4) * 8; // staging: first of 8 columns

    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    for (uint k0 = 0; k0 < k; k0 += 32) {
        const uint xr = row0 + lr;
        const uint wn = col0 + lr;
        for (uint i = 0; i < 8; i++) {
            const uint kk = k0 + lk + i;
            xs[lr][lk + i] = xr < m && kk < k ? ld(x, DT_X, ulong(xr) * k + kk) : 0.0f;
            ws[lr][lk + i] = wn < n && kk < k ? dequant(w, scales, biases, wn, kk, k) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint kk = 0; kk < 32; kk++) {
            const float a0 = xs[tr][kk];
            const float a1 = xs[tr + 16][kk];
            for (uint j = 0; j < 4; j++) {
                const float b = ws[tc + 8 * j][kk];
                acc[0][j] += a0 * b;
                acc[1][j] += a1 * b;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    for (uint i = 0; i < 2; i++) {
        const uint r = row0 + tr + 16 * i;
        for (uint j = 0; j < 4; j++) {
            const uint c = col0 + tc + 8 * j;
            if (r < m && c < n) {
                st(y, DT_Y, ulong(r) * n + c, acc[i][j]);
            }
        }
    }
}

// EmbedParams describes an embed dispatch.
struct EmbedParams {
    int vocab; // rows of the table
    int k;     // row width
    int m;     // ids
    float scale;
};

// embed gathers y[m, :] = scale · dequant(table[ids[m], :]); ids out of range
// give zero rows. One thread per output element.
kernel void embed(
    device const uchar* w [[buffer(0)]],
    device const uchar* scales [[buffer(1)]],
    device const uchar* biases [[buffer(2)]],
    device const int* ids [[buffer(3)]],
    device uchar* y [[buffer(4)]],
    constant EmbedParams& p [[buffer(5)]],
    uint2 gid [[thread_position_in_grid]])
{
    const uint c = gid.x;
    const uint r = gid.y;
    if (c >= uint(p.k) || r >= uint(p.m)) {
        return;
    }
    const int id = ids[r];
    float v = 0.0f;
    if (id >= 0 && id < p.vocab) {
        v = dequant(w, scales, biases, ulong(id), c, uint(p.k)) * p.scale;
    }
    st(y, DT_Y, ulong(r) * uint(p.k) + c, v);
}

// CombineParams describes a moe_combine dispatch.
struct CombineParams {
    int m;     // rows of y
    int n;     // row width
    int slots; // top-k
};

// moe_combine computes y[m, c] = Σ_j weights[m, j] · x[m, j, c] (weights F32).
kernel void moe_combine(
    device const uchar* x [[buffer(0)]],
    device const float* weights [[buffer(1)]],
    device uchar* y [[buffer(2)]],
    constant CombineParams& p [[buffer(3)]],
    uint2 gid [[thread_position_in_grid]])
{
    const uint c = gid.x;
    const uint r = gid.y;
    if (c >= uint(p.n) || r >= uint(p.m)) {
        return;
    }
    float acc = 0.0f;
    for (int j = 0; j < p.slots; j++) {
        const ulong pr = ulong(r) * uint(p.slots) + uint(j);
        acc += weights[pr] * ld(x, DT_X, pr * uint(p.n) + c);
    }
    st(y, DT_Y, ulong(r) * uint(p.n) + c, acc);
}
