// emu.h: compiles Metal Shading Language kernels as C++17 for CPU emulation.
//
// Address-space keywords are no-ops except `threadgroup`, which gives a
// kernel-scope array static storage shared by the fibers (GPU threads) of the
// running threadgroup; threadgroups run one after another. Attributes
// ([[buffer(0)]], ...) are ignored (-Wno-attributes); the generated glue binds
// arguments by parsing them. SIMD-group collectives and barriers suspend the
// calling fiber until its SIMD-group / threadgroup arrives; the scheduler
// (runner.cpp) reports divergence as an error.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <cfloat>
#include <sys/types.h>

#define kernel
#define device
#define constant
#define thread
#define threadgroup static

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;

// bfloat: bfloat16 with round-to-nearest-even conversion from float.
struct bfloat {
    uint16_t bits;
    bfloat() = default;
    bfloat(float f) : bits(from(f)) {}
    bfloat(double f) : bits(from(float(f))) {}
    bfloat(int f) : bits(from(float(f))) {}
    operator float() const {
        uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    static uint16_t from(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            return uint16_t(u >> 16) | 0x0040;
        }
        u += 0x7fffu + ((u >> 16) & 1u);
        return uint16_t(u >> 16);
    }
};

// half: IEEE binary16 with round-to-nearest-even conversion from float.
struct half {
    uint16_t bits;
    half() = default;
    half(float f) : bits(from(f)) {}
    half(double f) : bits(from(float(f))) {}
    half(int f) : bits(from(float(f))) {}
    operator float() const {
        uint32_t s = uint32_t(bits & 0x8000u) << 16;
        uint32_t e = (bits >> 10) & 0x1fu;
        uint32_t m = bits & 0x3ffu;
        uint32_t u;
        if (e == 0x1f) {
            u = s | 0x7f800000u | (m << 13);
        } else if (e != 0) {
            u = s | ((e + 112) << 23) | (m << 13);
        } else if (m == 0) {
            u = s;
        } else { // subnormal: normalize
            int sh = 0;
            while ((m & 0x400u) == 0) {
                m <<= 1;
                sh++;
            }
            m &= 0x3ffu;
            u = s | (uint32_t(113 - sh) << 23) | (m << 13);
        }
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    static uint16_t from(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        uint16_t s = uint16_t((u >> 16) & 0x8000u);
        uint32_t a = u & 0x7fffffffu;
        if (a > 0x7f800000u) {
            return s | 0x7e00u;
        }
        if (a >= 0x47800000u) { // ≥ 65536 (after rounding, overflow): inf
            // values in [65520, 65536) round to inf too, handled below
            return s | 0x7c00u;
        }
        if (a < 0x38800000u) { // below the smallest normal: subnormal or zero
            if (a < 0x33000000u) {
                return s; // < 2^-25 rounds to zero
            }
            uint32_t e = a >> 23;
            uint32_t m = (a & 0x7fffffu) | 0x800000u;
            uint32_t sh = 126 - e; // 14..24 (shift to 10-bit subnormal mantissa)
            uint32_t r = m >> sh;
            uint32_t rem = m & ((1u << sh) - 1u);
            uint32_t hw = 1u << (sh - 1);
            if (rem > hw || (rem == hw && (r & 1u))) {
                r++;
            }
            return s | uint16_t(r);
        }
        uint32_t r = a - 0x38000000u; // rebias exponent (127-15)<<23
        r += 0xfffu + ((r >> 13) & 1u);
        r >>= 13;
        if (r >= 0x7c00u) {
            return s | 0x7c00u;
        }
        return s | uint16_t(r);
    }
};

template <class T>
struct vec2 {
    T x, y;
    vec2() = default;
    vec2(T a, T b) : x(a), y(b) {}
};
template <class T>
struct vec3 {
    T x, y, z;
    vec3() = default;
    vec3(T a, T b, T c) : x(a), y(b), z(c) {}
};
template <class T>
struct vec4 {
    T x, y, z, w;
    vec4() = default;
    vec4(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}
};
typedef vec2<uint> uint2;
typedef vec3<uint> uint3;
typedef vec4<uint> uint4;
typedef vec2<int> int2;
typedef vec3<int> int3;
typedef vec4<int> int4;
typedef vec2<float> float2;
typedef vec3<float> float3;
typedef vec4<float> float4;
typedef vec2<ushort> ushort2;
typedef vec3<ushort> ushort3;

namespace emu {

// Kinds of SIMD-group collectives.
enum Op {
    OP_SUM,
    OP_MAX,
    OP_MIN,
    OP_SHUFFLE,
    OP_SHUFFLE_XOR,
    OP_SHUFFLE_DOWN,
    OP_SHUFFLE_UP,
    OP_BROADCAST,
    OP_PREFIX_EXCL_SUM,
    OP_PREFIX_INCL_SUM,
    OP_ANY,
    OP_ALL,
};

// Combine computes the results of a collective once every lane has arrived:
// vals[i] and res[i] point at lane i's value and result, args[i] is lane i's
// integer argument (a lane index or delta).
typedef void (*Combine)(void** vals, void** res, const int* args, int n);

// collective suspends the calling GPU thread until every lane of its
// SIMD-group reached the same collective (op, source line, sequence number);
// the last lane to arrive runs combine. Divergence is an error.
void collective(int op, const char* name, const char* file, int line, void* val, void* res, int arg, Combine combine);

// barrier suspends the calling GPU thread until every thread of its
// threadgroup (simd: of its SIMD-group) reached the same barrier.
void barrier(bool simd, const char* file, int line);

template <class T>
struct Comb {
    static void sum(void** v, void** r, const int*, int n) {
        T s = *(T*)v[0];
        for (int i = 1; i < n; i++) {
            s = T(s + *(T*)v[i]);
        }
        for (int i = 0; i < n; i++) {
            *(T*)r[i] = s;
        }
    }
    static void max(void** v, void** r, const int*, int n) {
        T s = *(T*)v[0];
        for (int i = 1; i < n; i++) {
            T x = *(T*)v[i];
            if (x > s) {
                s = x;
            }
        }
        for (int i = 0; i < n; i++) {
            *(T*)r[i] = s;
        }
    }
    static void min(void** v, void** r, const int*, int n) {
        T s = *(T*)v[0];
        for (int i = 1; i < n; i++) {
            T x = *(T*)v[i];
            if (x < s) {
                s = x;
            }
        }
        for (int i = 0; i < n; i++) {
            *(T*)r[i] = s;
        }
    }
    static void shuffle(void** v, void** r, const int* a, int n) {
        for (int i = 0; i < n; i++) {
            int src = a[i];
            *(T*)r[i] = *(T*)v[src >= 0 && src < n ? src : i];
        }
    }
    static void shuffle_xor(void** v, void** r, const int* a, int n) {
        for (int i = 0; i < n; i++) {
            int src = i ^ a[i];
            *(T*)r[i] = *(T*)v[src >= 0 && src < n ? src : i];
        }
    }
    static void shuffle_down(void** v, void** r, const int* a, int n) {
        for (int i = 0; i < n; i++) {
            int src = i + a[i];
            *(T*)r[i] = *(T*)v[src < n ? src : i];
        }
    }
    static void shuffle_up(void** v, void** r, const int* a, int n) {
        for (int i = 0; i < n; i++) {
            int src = i - a[i];
            *(T*)r[i] = *(T*)v[src >= 0 ? src : i];
        }
    }
    static void prefix_excl(void** v, void** r, const int*, int n) {
        T s = T(0);
        for (int i = 0; i < n; i++) {
            T x = *(T*)v[i];
            *(T*)r[i] = s;
            s = T(s + x);
        }
    }
    static void prefix_incl(void** v, void** r, const int*, int n) {
        T s = T(0);
        for (int i = 0; i < n; i++) {
            s = T(s + *(T*)v[i]);
            *(T*)r[i] = s;
        }
    }
};

inline void any(void** v, void** r, const int*, int n) {
    bool s = false;
    for (int i = 0; i < n; i++) {
        s = s || *(bool*)v[i];
    }
    for (int i = 0; i < n; i++) {
        *(bool*)r[i] = s;
    }
}

inline void all(void** v, void** r, const int*, int n) {
    bool s = true;
    for (int i = 0; i < n; i++) {
        s = s && *(bool*)v[i];
    }
    for (int i = 0; i < n; i++) {
        *(bool*)r[i] = s;
    }
}

template <class T>
inline T run(int op, const char* name, const char* file, int line, T x, int arg, Combine c) {
    T res = x;
    collective(op, name, file, line, &x, &res, arg, c);
    return res;
}

} // namespace emu

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

inline void threadgroup_barrier(mem_flags, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { emu::barrier(false, file, line); }
inline void simdgroup_barrier(mem_flags, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { emu::barrier(true, file, line); }

template <class T>
T simd_sum(T x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_SUM, "simd_sum", file, line, x, 0, emu::Comb<T>::sum); }
template <class T>
T simd_max(T x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_MAX, "simd_max", file, line, x, 0, emu::Comb<T>::max); }
template <class T>
T simd_min(T x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_MIN, "simd_min", file, line, x, 0, emu::Comb<T>::min); }
template <class T>
T simd_shuffle(T x, ushort lane, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_SHUFFLE, "simd_shuffle", file, line, x, int(lane), emu::Comb<T>::shuffle); }
template <class T>
T simd_shuffle_xor(T x, ushort mask, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_SHUFFLE_XOR, "simd_shuffle_xor", file, line, x, int(mask), emu::Comb<T>::shuffle_xor); }
template <class T>
T simd_shuffle_down(T x, ushort delta, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_SHUFFLE_DOWN, "simd_shuffle_down", file, line, x, int(delta), emu::Comb<T>::shuffle_down); }
template <class T>
T simd_shuffle_up(T x, ushort delta, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_SHUFFLE_UP, "simd_shuffle_up", file, line, x, int(delta), emu::Comb<T>::shuffle_up); }
template <class T>
T simd_broadcast(T x, ushort lane, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_BROADCAST, "simd_broadcast", file, line, x, int(lane), emu::Comb<T>::shuffle); }
template <class T>
T simd_prefix_exclusive_sum(T x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_PREFIX_EXCL_SUM, "simd_prefix_exclusive_sum", file, line, x, 0, emu::Comb<T>::prefix_excl); }
template <class T>
T simd_prefix_inclusive_sum(T x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_PREFIX_INCL_SUM, "simd_prefix_inclusive_sum", file, line, x, 0, emu::Comb<T>::prefix_incl); }
inline bool simd_any(bool x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_ANY, "simd_any", file, line, x, 0, emu::any); }
inline bool simd_all(bool x, int line = __builtin_LINE(), const char* file = __builtin_FILE()) { return emu::run(emu::OP_ALL, "simd_all", file, line, x, 0, emu::all); }

template <class T>
inline T max(T a, T b) { return a > b ? a : b; }
template <class T>
inline T min(T a, T b) { return a < b ? a : b; }
template <class T>
inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
inline float exp(float x) { return std::exp(x); }
inline float exp2(float x) { return std::exp2(x); }
inline float log(float x) { return std::log(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float tanh(float x) { return std::tanh(x); }
inline float fabs(float x) { return std::fabs(x); }
inline float abs(float x) { return std::fabs(x); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline float cos(float x) { return std::cos(x); }
inline float sin(float x) { return std::sin(x); }
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float pow(float a, float b) { return std::pow(a, b); }
inline bool isnan(float x) { return std::isnan(x); }
inline bool isinf(float x) { return std::isinf(x); }

namespace precise {
inline float cos(float x) { return std::cos(x); }
inline float sin(float x) { return std::sin(x); }
inline float tanh(float x) { return std::tanh(x); }
inline float exp(float x) { return std::exp(x); }
} // namespace precise

namespace fast {
inline float cos(float x) { return std::cos(x); }
inline float sin(float x) { return std::sin(x); }
inline float tanh(float x) { return std::tanh(x); }
inline float exp(float x) { return std::exp(x); }
} // namespace fast

template <class T, class U>
inline T as_type(U u) {
    static_assert(sizeof(T) == sizeof(U), "as_type: sizes differ");
    T t;
    std::memcpy(&t, &u, sizeof(T));
    return t;
}

} // namespace metal

namespace emu {

// Pos holds the position attributes of one GPU thread.
struct Pos {
    uint3 tpig;   // thread_position_in_grid
    uint3 tgpig;  // threadgroup_position_in_grid
    uint3 tptg;   // thread_position_in_threadgroup
    uint3 ntg;    // threads_per_threadgroup
    uint3 tgpg;   // threadgroups_per_grid
    uint3 tpg;    // threads_per_grid
    uint tiitg;   // thread_index_in_threadgroup
    uint lane;    // thread_index_in_simdgroup
    uint sg;      // simdgroup_index_in_threadgroup
    uint nsg;     // simdgroups_per_threadgroup
};

// KernelFn calls a kernel for one GPU thread with its bound buffers.
typedef void (*KernelFn)(const Pos& t, void** bufs);

// KernelInfo describes a kernel of the generated glue.
struct KernelInfo {
    const char* name;
    KernelFn fn;
    int nbuf;
};

// Attr converts a position attribute to the type the kernel declares.
template <class T>
struct Attr {
    static T get(uint3 v) { return T(v.x); }
};
template <>
struct Attr<uint3> {
    static uint3 get(uint3 v) { return v; }
};
template <>
struct Attr<uint2> {
    static uint2 get(uint3 v) { return uint2(v.x, v.y); }
};
template <>
struct Attr<ushort2> {
    static ushort2 get(uint3 v) { return ushort2(ushort(v.x), ushort(v.y)); }
};
template <>
struct Attr<ushort3> {
    static ushort3 get(uint3 v) { return ushort3(ushort(v.x), ushort(v.y), ushort(v.z)); }
};

} // namespace emu
