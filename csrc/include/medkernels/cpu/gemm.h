// A small register-blocked matrix product for the CPU kernel bodies (attention blocks, DCT bases).
//
// Included ONLY by per-instruction-set kernel headers, after medkernels/cpu/simd.h. Products here are
// small (tens to hundreds of rows, a head dim or a key block wide), so there is no packing: the
// kernel broadcasts one A element at a time against NV vectors of a B row, holding an MR x NV block
// of C in registers (6 x 2 vectors: 12 accumulators, 2 B vectors and a broadcast fill the 16 AVX2
// registers). A is read through element strides, so A and A^T cost the same.
#pragma once

#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

// C[MR x NV*lanes] (+)= sum_k A(r, k) * B[k, :], A(r, k) = A[r * a_rs + k * a_ks].
template <class T, int MR, int NV, bool kAcc>
inline void gemm_block(int64_t K, const T* A, int64_t a_rs, int64_t a_ks, const T* B, int64_t ldb, T* C,
                       int64_t ldc) {
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
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_ks, const T* B, int64_t ldb,
                 T* C, int64_t ldc) {
  constexpr int W = lanes<T>;
  int64_t j = 0;
  for (; j + 2 * W <= N; j += 2 * W) gemm_rows<T, 2, kAcc>(M, K, A, a_rs, a_ks, B + j, ldb, C + j, ldc);
  if (j < N) gemm_rows<T, 1, kAcc>(M, K, A, a_rs, a_ks, B + j, ldb, C + j, ldc);
}

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
