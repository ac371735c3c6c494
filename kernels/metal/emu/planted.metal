// planted.metal: kernels with planted bugs, compiled only into the emulator,
// to prove that it reports them. Not part of the Metal library.

struct PlantedParams {
    uint n;
};

// planted_divergent_sum: lanes 0..15 return before the simd_sum.
kernel void planted_divergent_sum(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    uint lane [[thread_index_in_simdgroup]])
{
    if (lane < 16) {
        return;
    }
    y[lane] = simd_sum(x[lane]);
}

// planted_divergent_barrier: odd threads skip the barrier.
kernel void planted_divergent_barrier(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float t[64];
    t[tid] = x[tid];
    if (tid % 2 == 0) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    y[tid] = t[(tid + 1) % 64];
}

// planted_mismatched: half of the lanes reduce with simd_sum, half with simd_max.
kernel void planted_mismatched(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    uint lane [[thread_index_in_simdgroup]])
{
    float v = x[lane];
    if (lane < 16) {
        v = simd_sum(v);
    } else {
        v = simd_max(v);
    }
    y[lane] = v;
}

// planted_oob_read: reads one element past the end of x.
kernel void planted_oob_read(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    constant PlantedParams& p [[buffer(2)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid < p.n) {
        y[gid] = x[gid + 1];
    }
}

// planted_ok: a correct kernel using a collective and a barrier, the control
// for the planted ones: y[i] = Σ x over i's SIMD-group + x[i^1].
kernel void planted_ok(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    uint tid [[thread_index_in_threadgroup]],
    uint gid [[thread_position_in_grid]])
{
    threadgroup float t[64];
    t[tid] = x[gid];
    const float s = simd_sum(x[gid]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[gid] = s + t[tid ^ 1];
}

// planted_race: each thread reads its left neighbour's threadgroup value
// without a barrier, so the result depends on the schedule.
kernel void planted_race(
    device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]],
    uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float t[64];
    t[tid] = x[tid];
    y[tid] = t[(tid + 63) % 64];
}
