// A small register-blocked matrix product for the CPU kernel bodies (attention blocks, DCT bases).
//
// Included ONLY by per-instruction-set kernel headers, after medkernels/cpu/simd.h. Products here are
// small (tens to hundreds of rows, a head dim or a key block wide), so there is no packing: the
// kernel broadcasts one A element at a time against NV vectors of a B row, holding an MR x NV block
// of C in registers (6 x 2 vectors: 12 accumulators, 2 B vectors and a broadcast fill the 16 AVX2
// registers). A is read through element strides, so A and A^T cost the same.
#pragma once

#include "medkernels/cpu/packed_gemm.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

// C[MR x NV*lanes] (+)= sum_k A(r, k) * B[k, :], A(r, k) = A[r * a_rs + k * a_ks].
template <class T, int MR, int NV, bool kAcc>
inline void gemm_block(int64_t K, const T* A, int64_t a_rs, int64_t a_ks, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int W = lanes<T>;
  vec<T> acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = kAcc ? vload(C + r * ldc + v * W) : vec<T>{};
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    const T* a = A + k * a_ks;
    vec<T> bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vec<T> ar = vsplat(a[r * a_rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * W, acc[r][v]);
}

template <class T, int NV, bool kAcc>
inline void gemm_rows(int64_t M, int64_t K, const T* A, int64_t a_rs, int64_t a_ks, const T* B, int64_t ldb, T* C,
                      int64_t ldc) {
  constexpr int MR = 6;
  int64_t i = 0;
  for (; i + MR <= M; i += MR) gemm_block<T, MR, NV, kAcc>(K, A + i * a_rs, a_rs, a_ks, B, ldb, C + i * ldc, ldc);
  const T* a = A + i * a_rs;
  T* c = C + i * ldc;
  switch (M - i) {
    case 5: gemm_block<T, 5, NV, kAcc>(K, a, a_rs, a_ks, B, ldb, c, ldc); break;
    case 4: gemm_block<T, 4, NV, kAcc>(K, a, a_rs, a_ks, B, ldb, c, ldc); break;
    case 3: gemm_block<T, 3, NV, kAcc>(K, a, a_rs, a_ks, B, ldb, c, ldc); break;
    case 2: gemm_block<T, 2, NV, kAcc>(K, a, a_rs, a_ks, B, ldb, c, ldc); break;
    case 1: gemm_block<T, 1, NV, kAcc>(K, a, a_rs, a_ks, B, ldb, c, ldc); break;
    default: break;
  }
}

// C (M x N) = A (M x K) * B (K x N), or += with kAcc. B and C are row-major with leading dims ldb and
// ldc; N must be a whole number of vectors (callers pad with zeros).
template <bool kAcc, class T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_ks, const T* B, int64_t ldb, T* C,
                 int64_t ldc) {
  constexpr int W = lanes<T>;
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W) gemm_rows<T, 2, kAcc>(M, K, A, a_rs, a_ks, B + j, ldb, C + j, ldc);
  if (j < N) gemm_rows<T, 1, kAcc>(M, K, A, a_rs, a_ks, B + j, ldb, C + j, ldc);
}

// ---- packed GEMM for large products (GemmArgs, medkernels/cpu/packed_gemm.h) ---------------------
// B is packed once into NR-column micro-panels per kGemmKC-row block (shared by all tasks); each task
// (a kGemmMC x kGemmNC tile of C) packs its rows of A into MR-row micro-panels per k-block and runs an
// MR x NR register tile over them. Every element of C is one accumulator lane summed over k in
// ascending order, k-block after k-block; a tile at the edge of C runs the same code on zero-padded
// panels through a buffer. So each result depends on the shapes only, never on the split into tasks or
// the thread count.
template <class T>
inline constexpr int kGemmMR = 6;
template <class T>
inline constexpr int kGemmNV = 2;  // NR = 2 vectors: 6 x 2 accumulators, 2 B vectors and a broadcast
template <class T>
inline constexpr int64_t kGemmNR = kGemmNV<T> * lanes<T>;

template <class T>
inline int64_t gemm_panels(const GemmArgs& g) {
  return (g.n + kGemmNR<T> - 1) / kGemmNR<T>;
}
// B panel (k-block kb, column panel q): kc x NR, k-major; zero columns past n.
template <class T>
inline T* gemm_b_panel(const GemmArgs& g, int64_t kb, int64_t q) {
  return static_cast<T*>(g.packed_b) + (kb * gemm_panels<T>(g) + q) * kGemmKC * kGemmNR<T>;
}

template <class T>
void gemm_pack_b_t(const GemmArgs& g, int64_t p0, int64_t p1) {
  constexpr int64_t NR = kGemmNR<T>;
  const int64_t np = gemm_panels<T>(g);
  const T* b = static_cast<const T*>(g.b);
  for (int64_t pi = p0; pi < p1; ++pi) {
    const int64_t kb = pi / np, q = pi % np, k0 = kb * kGemmKC, kc = g.k - k0 < kGemmKC ? g.k - k0 : kGemmKC;
    const int64_t j0 = q * NR, nj = g.n - j0 < NR ? g.n - j0 : NR;
    T* dst = gemm_b_panel<T>(g, kb, q);
    if (g.b_ns == 1) {  // rows of B contiguous
      for (int64_t kk = 0; kk < kc; ++kk) {
        const T* src = b + (k0 + kk) * g.b_ks + j0;
        for (int64_t j = 0; j < nj; ++j) dst[kk * NR + j] = src[j];
        for (int64_t j = nj; j < NR; ++j) dst[kk * NR + j] = T(0);
      }
    } else {  // columns of B contiguous (B = W^T): read along k
      for (int64_t j = 0; j < NR; ++j) {
        if (j >= nj) {
          for (int64_t kk = 0; kk < kc; ++kk) dst[kk * NR + j] = T(0);
          continue;
        }
        const T* src = b + k0 * g.b_ks + (j0 + j) * g.b_ns;
        for (int64_t kk = 0; kk < kc; ++kk) dst[kk * NR + j] = src[kk * g.b_ks];
      }
    }
  }
}

// A rows [i0, i0 + mr) x k-block [k0, k0 + kc) as ceil(mr / MR) micro-panels of kc x MR (k-major).
template <class T>
inline void gemm_pack_a(const GemmArgs& g, int64_t i0, int64_t mr, int64_t k0, int64_t kc, T* dst) {
  constexpr int MR = kGemmMR<T>;
  const T* a = static_cast<const T*>(g.a);
  for (int64_t r0 = 0; r0 < mr; r0 += MR, dst += kc * MR) {
    const int64_t rows = mr - r0 < MR ? mr - r0 : MR;
    if (g.a_ks == 1) {
      for (int64_t r = 0; r < MR; ++r) {
        if (r >= rows) {
          for (int64_t kk = 0; kk < kc; ++kk) dst[kk * MR + r] = T(0);
          continue;
        }
        const T* src = a + (i0 + r0 + r) * g.a_rs + k0;
        for (int64_t kk = 0; kk < kc; ++kk) dst[kk * MR + r] = src[kk];
      }
    } else {  // A = X^T: a row of MR values per k is contiguous
      for (int64_t kk = 0; kk < kc; ++kk) {
        const T* src = a + (k0 + kk) * g.a_ks + (i0 + r0) * g.a_rs;
        for (int64_t r = 0; r < rows; ++r) dst[kk * MR + r] = src[r * g.a_rs];
        for (int64_t r = rows; r < MR; ++r) dst[kk * MR + r] = T(0);
      }
    }
  }
}

// C tile (MR x NR at c, leading dim ldc) = (acc ? C : 0) + A panel * B panel over kc: gemm_block on the
// packed panels (A(r, k) = a[k * MR + r], B rows NR apart).
template <class T>
inline void gemm_micro(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, bool acc) {
  constexpr int MR = kGemmMR<T>, NV = kGemmNV<T>;
  if (acc)
    gemm_block<T, MR, NV, true>(kc, a, 1, MR, b, kGemmNR<T>, c, ldc);
  else
    gemm_block<T, MR, NV, false>(kc, a, 1, MR, b, kGemmNR<T>, c, ldc);
}

template <class T>
inline int64_t gemm_scratch_t(const GemmArgs& g) {
  return round_up(kGemmMC * kGemmKC, kGemmMR<T>) * int64_t(sizeof(T)) + kGemmMR<T> * kGemmNR<T> * int64_t(sizeof(T)) +
         128;
}

template <class T>
void gemm_tiles_t(const GemmArgs& g, int64_t t0, int64_t t1, void* scratch) {
  constexpr int MR = kGemmMR<T>;
  constexpr int64_t NR = kGemmNR<T>;
  Carver cv{reinterpret_cast<uintptr_t>(scratch)};
  T* pa = cv.take<T>(round_up(kGemmMC, MR) * kGemmKC);
  T* edge = cv.take<T>(MR * NR);
  T* c = static_cast<T*>(g.c);
  const int64_t ntn = gemm_tiles_n(g), nkb = (g.k + kGemmKC - 1) / kGemmKC;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i0 = (t / ntn) * kGemmMC, j0 = (t % ntn) * kGemmNC;
    const int64_t mr = g.m - i0 < kGemmMC ? g.m - i0 : kGemmMC, nc = g.n - j0 < kGemmNC ? g.n - j0 : kGemmNC;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * kGemmKC, kc = g.k - k0 < kGemmKC ? g.k - k0 : kGemmKC;
      const bool acc = g.accumulate || kb > 0;
      gemm_pack_a<T>(g, i0, mr, k0, kc, pa);
      for (int64_t jj = 0; jj < nc; jj += NR) {
        const T* pb = gemm_b_panel<T>(g, kb, (j0 + jj) / NR);
        const int64_t cols = nc - jj < NR ? nc - jj : NR;
        for (int64_t r0 = 0; r0 < mr; r0 += MR) {
          const int64_t rows = mr - r0 < MR ? mr - r0 : MR;
          T* ct = c + (i0 + r0) * g.ldc + j0 + jj;
          if (rows == MR && cols == NR) {
            gemm_micro<T>(kc, pa + r0 * kc, pb, ct, g.ldc, acc);
            continue;
          }
          for (int64_t i = 0; i < MR; ++i)  // the same arithmetic through a whole-tile buffer
            for (int64_t j = 0; j < NR; ++j) edge[i * NR + j] = acc && i < rows && j < cols ? ct[i * g.ldc + j] : T(0);
          gemm_micro<T>(kc, pa + r0 * kc, pb, edge, NR, acc);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) ct[i * g.ldc + j] = edge[i * NR + j];
        }
      }
    }
  }
}

template <class F>
inline void with_gemm_type(const GemmArgs& g, F&& f) {
  if (g.acc == ScalarKind::Float64)
    f(double{});
  else
    f(float{});
}
inline int64_t gemm_packed_b_bytes_entry(const GemmArgs& g) {
  int64_t bytes = 0;
  with_gemm_type(g, [&](auto t) {
    using T = decltype(t);
    bytes = ((g.k + kGemmKC - 1) / kGemmKC) * gemm_panels<T>(g) * kGemmKC * kGemmNR<T> * int64_t(sizeof(T));
  });
  return bytes;
}
inline int64_t gemm_b_panel_count_entry(const GemmArgs& g) {
  int64_t count = 0;
  with_gemm_type(g, [&](auto t) { count = ((g.k + kGemmKC - 1) / kGemmKC) * gemm_panels<decltype(t)>(g); });
  return count;
}
inline void gemm_pack_b_entry(const GemmArgs& g, int64_t p0, int64_t p1) {
  with_gemm_type(g, [&](auto t) { gemm_pack_b_t<decltype(t)>(g, p0, p1); });
}
inline int64_t gemm_scratch_bytes_entry(const GemmArgs& g) {
  int64_t bytes = 0;
  with_gemm_type(g, [&](auto t) { bytes = gemm_scratch_t<decltype(t)>(g); });
  return bytes;
}
inline void gemm_tiles_entry(const GemmArgs& g, int64_t t0, int64_t t1, void* scratch) {
  with_gemm_type(g, [&](auto t) { gemm_tiles_t<decltype(t)>(g, t0, t1, scratch); });
}

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
