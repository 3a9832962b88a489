// Portable SIMD for the CPU kernel bodies: GCC/Clang vector extensions, vector exp/log/softplus/
// sigmoid, and float16/bfloat16 conversions.
//
// Included ONLY by the per-instruction-set kernel files (generated per ISA from csrc/cpu/isa_kernels.cpp.in), which
// define
//   MK_ISA        the namespace of this compilation (base, avx2, ...)
//   MK_VEC_BYTES  the vector width in bytes (16 = SSE2/NEON, 32 = AVX2, 64 = AVX-512)
// Everything lives in an unnamed namespace, so no symbol compiled with wide instructions can be
// merged by the linker into code that runs on a machine without them.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef MK_ISA
#error "define MK_ISA before including medkernels/cpu/simd.h"
#endif
#ifndef MK_VEC_BYTES
#error "define MK_VEC_BYTES before including medkernels/cpu/simd.h"
#endif

namespace medkernels::cpu::MK_ISA {
namespace {

typedef float vf32 __attribute__((vector_size(MK_VEC_BYTES)));
typedef int32_t vi32 __attribute__((vector_size(MK_VEC_BYTES)));
typedef double vf64 __attribute__((vector_size(MK_VEC_BYTES)));
typedef int64_t vi64 __attribute__((vector_size(MK_VEC_BYTES)));

template <class T>
struct Simd;
template <>
struct Simd<float> {
  using V = vf32;
  using I = vi32;
  static constexpr int lanes = MK_VEC_BYTES / 4;
};
template <>
struct Simd<double> {
  using V = vf64;
  using I = vi64;
  static constexpr int lanes = MK_VEC_BYTES / 8;
};
template <class T>
using vec = typename Simd<T>::V;
template <class T>
constexpr int lanes = Simd<T>::lanes;

template <class T>
inline vec<T> vload(const T* p) {
  vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void vstore(T* p, vec<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// A broadcast: one vbroadcastss/shufps. (`vec{} + s` costs an add; a per-lane loop or a shuffle of
// a zeroed vector costs inserts.)
template <class T>
inline vec<T> vsplat(T s) {
#if defined(__AVX512F__) && MK_VEC_BYTES == 64
  if constexpr (__is_same(T, float))
    return _mm512_set1_ps(s);
  else
    return _mm512_set1_pd(s);
#elif defined(__AVX__) && MK_VEC_BYTES == 32
  if constexpr (__is_same(T, float))
    return _mm256_set1_ps(s);
  else
    return _mm256_set1_pd(s);
#elif defined(__SSE2__) && MK_VEC_BYTES == 16
  if constexpr (__is_same(T, float))
    return _mm_set1_ps(s);
  else
    return _mm_set1_pd(s);
#else
  return vec<T>{} + s;
#endif
}
// Lane sum in a fixed order (deterministic). 64-byte vectors fold in halves down to 16 bytes first (two
// vector adds), then add those lanes pairwise: 4 dependent adds instead of a chain of 15 for float.
template <class T>
inline T hsum(vec<T> v) {
#if defined(__AVX512DQ__) && MK_VEC_BYTES == 64
  if constexpr (__is_same(T, float)) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    return (b[0] + b[1]) + (b[2] + b[3]);
  } else {
    const __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return b[0] + b[1];
  }
#else
  T s = v[0];
  for (int i = 1; i < lanes<T>; ++i) s += v[i];
  return s;
#endif
}
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Integer lane vectors: 0, 1, ..., lanes - 1, and the mask of lanes below n (a vector's real lanes
// when the rest is padding; select with `mask ? x : vec<T>{}`).
template <class T>
inline typename Simd<T>::I lane_iota() {
  typename Simd<T>::I v{};
  for (int l = 0; l < lanes<T>; ++l) v[l] = l;
  return v;
}
template <class T>
inline typename Simd<T>::I lanes_below(int64_t n) {
  typename Simd<T>::I m{};
  for (int l = 0; l < lanes<T>; ++l) m[l] = l < n ? -1 : 0;
  return m;
}

// Carves 64-byte aligned arrays out of one scratch block. Built on address 0 it only measures, so
// the size the torch side allocates comes from the same code that carves.
struct Carver {
  uintptr_t p;
  template <class T>
  T* take(int64_t n) {
    T* r = reinterpret_cast<T*>(p);
    p += uintptr_t(round_up(n * int64_t(sizeof(T)), 64));
    return r;
  }
};

// y[i] = lane sum of the vector stored at P + i * lanes, for i < n. Deferring the horizontal sums
// of a chunk to here lets the AVX2 and AVX-512 paths reduce eight vectors with one transpose-add.
// With `every` > 1 the vectors sit every `every` vectors apart (interleaved buffers).
template <class T>
inline void reduce_lanes_strided(const T* P, T* y, int64_t n, int64_t every) {
  const int64_t st = every * lanes<T>;
  int64_t i = 0;
#if defined(__AVX2__) && (MK_VEC_BYTES == 32 || (MK_VEC_BYTES == 64 && defined(__AVX512DQ__)))
  if constexpr (__is_same(T, float)) {
#if MK_VEC_BYTES == 64
    // 16 lanes: the two halves added first, then the 8-lane transpose-add.
    const auto ld = [](const float* q) {
      const __m512 v = _mm512_loadu_ps(q);
      return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    };
#else
    const auto ld = [](const float* q) { return _mm256_loadu_ps(q); };
#endif
    for (; i + 8 <= n; i += 8) {
      const float* r = P + i * st;
      const __m256 a = _mm256_hadd_ps(ld(r), ld(r + st));
      const __m256 b = _mm256_hadd_ps(ld(r + 2 * st), ld(r + 3 * st));
      const __m256 c = _mm256_hadd_ps(ld(r + 4 * st), ld(r + 5 * st));
      const __m256 d = _mm256_hadd_ps(ld(r + 6 * st), ld(r + 7 * st));
      const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
      _mm256_storeu_ps(y + i,
                       _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31)));
    }
  }
#endif
  for (; i < n; ++i) y[i] = hsum<T>(vload(P + i * st));
}
template <class T>
inline void reduce_lanes(const T* P, T* y, int64_t n) {
  reduce_lanes_strided(P, y, n, 1);
}

// ---- float32 math -------------------------------------------------------------------------------

// max(lo, x) and min(hi, x) that keep a NaN x (the x86 instructions return their second operand then).
inline vf32 vmax_nan(vf32 lo, vf32 x) {
#if defined(__AVX512F__) && MK_VEC_BYTES == 64
  return _mm512_max_ps(lo, x);
#elif defined(__AVX__) && MK_VEC_BYTES == 32
  return __builtin_ia32_maxps256(lo, x);
#elif defined(__SSE__) && MK_VEC_BYTES == 16
  return __builtin_ia32_maxps(lo, x);
#else
  return x < lo ? lo : x;
#endif
}
inline vf32 vmin_nan(vf32 hi, vf32 x) {
#if defined(__AVX512F__) && MK_VEC_BYTES == 64
  return _mm512_min_ps(hi, x);
#elif defined(__AVX__) && MK_VEC_BYTES == 32
  return __builtin_ia32_minps256(hi, x);
#elif defined(__SSE__) && MK_VEC_BYTES == 16
  return __builtin_ia32_minps(hi, x);
#else
  return x > hi ? hi : x;
#endif
}

// 2^x, within 2 ulp for x >= -125; inf from x >= 128; NaN kept. Results below 2^-125 (~2.4e-38)
// come out as 2^-125: the kernels use this as a decay factor and sigmoid/softplus term, where a
// value that small is indistinguishable from 0.
inline vf32 vexp2(vf32 x) {
  const vf32 xc = vmin_nan(vsplat(128.0f), vmax_nan(vsplat(-125.0f), x));
  const vf32 magic = vsplat(12582912.0f);  // 1.5 * 2^23: t's low mantissa bits hold round(xc)
  const vf32 t = xc + magic;
  const vf32 f = xc - (t - magic);    // in [-0.5, 0.5], exact
  vf32 p = vsplat(1.535336196e-04f);  // minimax fit of (2^f - 1) / f, 1.6 ulp in float32
  p = p * f + 1.339887502e-03f;
  p = p * f + 9.618436918e-03f;
  p = p * f + 5.550332367e-02f;
  p = p * f + 2.402264774e-01f;
  p = p * f + 6.931471825e-01f;
  p = p * f + 1.0f;
  // p in [0.707, 1.414]; adding round(xc) to its exponent cannot leave the normal range, and
  // xc = 128 gives p = 1 exactly and the bits of inf.
  return (vf32)((vi32)p + ((vi32)t << 23));
}
inline vf32 vexp(vf32 x) { return vexp2(x * 1.44269504088896341f); }

// exp(x) for x <= 0: softmax numerators after the row max (or the logsumexp) is subtracted. Within
// 4 ulp down to exp(-87); below, a value under 2^-126 (~1.2e-38) that no sum of such terms can
// tell from 0. One clamp and a degree-5 polynomial: a third fewer operations than vexp.
inline vf32 vexp_nonpos(vf32 x) {
  const vf32 y = vmax_nan(vsplat(-126.0f), x * 1.44269504088896341f);
  const vf32 magic = vsplat(12582912.0f);
  const vf32 t = y + magic;
  const vf32 f = y - (t - magic);
  vf32 p = vsplat(1.326472743e-03f);  // fit of 2^f on [-0.5, 0.5], 3.2 ulp in float32
  p = p * f + 9.671512746e-03f;
  p = p * f + 5.550733742e-02f;
  p = p * f + 2.402224208e-01f;
  p = p * f + 6.931469776e-01f;
  p = p * f + 1.0f;
  return (vf32)((vi32)p + ((vi32)t << 23));
}

// log1p(e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) in [0, 1/3], whose odd series
// converges by a factor s^2 <= 1/9 per term (truncation ~1e-8 relative; within 1 ulp of log1p
// from float32 e). One division and seven FMAs: half the operations of log(1 + e) by a range
// reduction, and no cancellation as e -> 0.
inline vf32 vlog1p_unit(vf32 e) {
  const vf32 s2 = (e + e) / (e + 2.0f);  // 2s
  const vf32 w = s2 * s2;                // 4 s^2; the coefficients are 1 / ((2k + 1) 4^k)
  vf32 p = vsplat(1.0f / (13.0f * 4096.0f));
  p = p * w + 1.0f / (11.0f * 1024.0f);
  p = p * w + 1.0f / (9.0f * 256.0f);
  p = p * w + 1.0f / (7.0f * 64.0f);
  p = p * w + 1.0f / (5.0f * 16.0f);
  p = p * w + 1.0f / (3.0f * 4.0f);
  return s2 + s2 * (p * w);
}

// torch.nn.functional.softplus(x) with beta 1, threshold 20; with `sig`, also its derivative
// sigmoid(x) (1 above the threshold), from the same exp.
inline vf32 vsoftplus(vf32 x, vf32* sig = nullptr) {
  const vf32 ax = x < 0.0f ? -x : x;
  const vf32 pos = x > 0.0f ? x : vsplat(0.0f);
  const vf32 e = vexp(-ax);
  if (sig) {
    const vf32 inv = 1.0f / (1.0f + e);
    *sig = x > 20.0f ? vsplat(1.0f) : (x >= 0.0f ? inv : e * inv);
  }
  return x > 20.0f ? x : pos + vlog1p_unit(e);
}
inline vf32 vsigmoid(vf32 x) { return 1.0f / (1.0f + vexp(-x)); }

// ---- float64: elementwise libm (the float64 path exists for gradcheck and precision studies) ---

inline vf64 vexp(vf64 x) {
  for (int i = 0; i < lanes<double>; ++i) x[i] = __builtin_exp(x[i]);
  return x;
}
inline vf64 vexp_nonpos(vf64 x) { return vexp(x); }
inline vf64 vexp2(vf64 x) {
  for (int i = 0; i < lanes<double>; ++i) x[i] = __builtin_exp2(x[i]);
  return x;
}
inline vf64 vsoftplus(vf64 x, vf64* sig = nullptr) {
  for (int i = 0; i < lanes<double>; ++i) {
    if (sig) (*sig)[i] = x[i] > 20.0 ? 1.0 : 1.0 / (1.0 + __builtin_exp(-x[i]));
    x[i] = x[i] > 20.0 ? x[i] : __builtin_log1p(__builtin_exp(x[i]));
  }
  return x;
}
inline vf64 vsigmoid(vf64 x) {
  for (int i = 0; i < lanes<double>; ++i) x[i] = 1.0 / (1.0 + __builtin_exp(-x[i]));
  return x;
}

// ---- scalar math and row softmax helpers (float or double) --------------------------------------

template <class T>
inline T sexp(T x) {
  if constexpr (__is_same(T, float))
    return __builtin_expf(x);
  else
    return __builtin_exp(x);
}
template <class T>
inline T slog(T x) {
  if constexpr (__is_same(T, float))
    return __builtin_logf(x);
  else
    return __builtin_log(x);
}
// A row's logsumexp from its max mx and sum of exp(s - mx), as torch.logsumexp: an infinite max is the
// result itself (a +inf logit gives +inf, not inf - inf = NaN).
template <class T>
inline T row_lse(T mx, T sum) {
  return mx == T(__builtin_inf()) || mx == T(-__builtin_inf()) ? mx : mx + slog(sum);
}

// x[i] = exp(x[i] - shift) for i < n with x[i] <= shift (softmax), vectorised; returns the sum (fixed order).
template <class T>
inline T exp_shift(T* x, int64_t n, T shift) {
  constexpr int W = lanes<T>;
  vec<T> acc{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vec<T> e = vexp_nonpos(vload(x + i) - shift);
    vstore(x + i, e);
    acc += e;
  }
  T sum = hsum<T>(acc);
  for (; i < n; ++i) {
    x[i] = sexp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

// max of x[0..n), n >= 1 (NaN-propagation is not needed: callers feed finite logits or -inf).
template <class T>
inline T row_max(const T* x, int64_t n) {
  constexpr int W = lanes<T>;
  T m = x[0];
  int64_t i = 0;
  if (n >= W) {
    vec<T> mv = vload(x);
    for (i = W; i + W <= n; i += W) {
      const vec<T> v = vload(x + i);
      mv = v > mv ? v : mv;
    }
    for (int l = 0; l < W; ++l) m = mv[l] > m ? mv[l] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// ---- storage types ------------------------------------------------------------------------------

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float f32_from_bits(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

inline float to_float(bf16 v) { return f32_from_bits(uint32_t(v.bits) << 16); }
inline bf16 bf16_from_float(float f) {  // round to nearest even, NaN stays NaN
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  return bf16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float to_float(f16 v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return f32_from_bits(sign | 0x7f800000u | (m << 13));
  if (e != 0) return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return f32_from_bits(sign);
  // subnormal half: normalise the mantissa
  const int shift = __builtin_clz(m) - 21;  // leading zeros within the 11-bit field
  m = (m << shift) & 0x3ffu;
  return f32_from_bits(sign | (uint32_t(113 - shift) << 23) | (m << 13));
}
inline f16 f16_from_float(float f) {  // round to nearest even, integer arithmetic only
  uint32_t x = f32_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return f16{uint16_t(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (x >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // rounds to inf
  if (x < 0x38800000u) {                                       // below 2^-14: a subnormal half or 0
    if (x <= 0x33000000u) return f16{sign};                    // <= 2^-25 rounds to 0
    const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return f16{uint16_t(sign | h)};
  }
  uint32_t h = (x >> 13) - (112u << 10);
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return f16{uint16_t(sign | h)};
}

// The accumulation type of a storage type: double for double, float for float, bf16 and f16.
template <class S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <class Acc, class S>
inline Acc to_acc(S v) {
  if constexpr (__is_same(S, bf16) || __is_same(S, f16))
    return Acc(to_float(v));
  else
    return Acc(v);
}
template <class S, class Acc>
inline S from_acc(Acc v) {
  if constexpr (__is_same(S, bf16))
    return bf16_from_float(float(v));
  else if constexpr (__is_same(S, f16))
    return f16_from_float(float(v));
  else
    return S(v);
}

// n storage values -> acc, zero-filled up to a whole number of vectors.
template <class S, class Acc>
inline void load_span(const S* src, Acc* dst, int64_t n) {
  int64_t i = 0;
  for (; i < n; ++i) dst[i] = to_acc<Acc>(src[i]);
  for (const int64_t e = round_up(n, lanes<Acc>); i < e; ++i) dst[i] = Acc(0);
}
template <class S, class Acc>
inline void store_span(S* dst, const Acc* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_acc<S>(src[i]);
}

// Calls f(S{}) with S the storage type named by `kind` (float, double, f16, bf16).
template <class F>
inline void with_storage(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::Float32: return f(float{});
    case ScalarKind::Float64: return f(double{});
    case ScalarKind::Float16: return f(f16{});
    case ScalarKind::BFloat16: return f(bf16{});
  }
}

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
