// A packed, cache-blocked matrix product for large operands (the FasterKAN layer's products), with a
// reduction order fixed by the shapes: every element of C sums over k in ascending order in blocks of
// kGemmKC, whatever the split of C into tiles, so results are the same bits for any thread count
// (a vendor BLAS changes its blocking with the thread count). Plain structs, no torch.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// C (m x n) = A (m x k) * B (k x n), or C += with accumulate; all in acc (Float32 or Float64).
struct GemmArgs {
  ScalarKind acc = ScalarKind::Float32;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;  // A(i, kk) = a[i * a_rs + kk * a_ks]: a_ks == 1 (rows) or a_rs == 1 (A = X^T)
  int64_t a_rs = 0, a_ks = 0;
  const void* b = nullptr;  // B(kk, j) = b[kk * b_ks + j * b_ns]: b_ns == 1 (rows) or b_ks == 1 (B = W^T)
  int64_t b_ks = 0, b_ns = 0;
  void* c = nullptr;  // C(i, j) = c[i * ldc + j]
  int64_t ldc = 0;
  bool accumulate = false;
  void* packed_b = nullptr;  // packed_b_bytes, written by pack_b before the tiles run
};

inline constexpr int64_t kGemmKC = 256;  // k-block: the reduction order's only parameter
inline constexpr int64_t kGemmMC = 96;   // C rows per tile (a multiple of every ISA's MR = 6)
inline constexpr int64_t kGemmNC = 256;  // C columns per tile (a multiple of every ISA's NR)

inline int64_t gemm_tiles_n(const GemmArgs& g) { return (g.n + kGemmNC - 1) / kGemmNC; }
inline int64_t gemm_tile_count(const GemmArgs& g) { return ((g.m + kGemmMC - 1) / kGemmMC) * gemm_tiles_n(g); }

struct GemmKernels {
  int64_t (*packed_b_bytes)(const GemmArgs&);
  int64_t (*b_panel_count)(const GemmArgs&);
  void (*pack_b)(const GemmArgs&, int64_t panel_begin, int64_t panel_end);              // independent panels
  int64_t (*scratch_bytes)(const GemmArgs&);                                            // per thread
  void (*tiles)(const GemmArgs&, int64_t tile_begin, int64_t tile_end, void* scratch);  // independent tiles
};

}  // namespace medkernels::cpu
