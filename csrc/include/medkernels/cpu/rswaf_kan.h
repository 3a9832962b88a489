// FasterKAN's fused RSWAF basis + linear layer (medkernels::rswaf_kan_fwd / _bwd) CPU kernel interface:
// plain structs and function pointers, no torch.
#pragma once

#include <cstdint>

#include "medkernels/cpu/packed_gemm.h"
#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// The basis of one token row of x (in channels, G grid points), flattened channel-major (k = i * G + g):
//   a[k] = (x[i] - grid[g]) * inv_den,  phi[k] = 1 - tanh(a[k])^2.
// The kernels work on rows of tokens; the torch side runs the matrix products with the weight on the
// table's packed GEMM (a reduction order fixed by the shapes, so the same bits for any thread count).
struct KanParams {
  ScalarKind dtype = ScalarKind::Float32;  // storage of x and dx
  ScalarKind acc = ScalarKind::Float32;    // Float32, or Float64 for float64 storage (grid, buffers)
  int64_t in = 0, grids = 0, k = 0;        // k = in * grids
  double inv_den = 1.0;
  const void* x = nullptr;         // (rows, in) contiguous, storage dtype
  const void* grid_rep = nullptr;  // (k,) acc: grid[k % grids]
  // backward outputs (each optional)
  void* dx = nullptr;          // (rows, in) contiguous, storage dtype
  void* dgrid_rows = nullptr;  // (rows, grids) acc: += sum_i dL/da[i * G + g] per row
  void* dinv_rows = nullptr;   // (rows,) acc: += sum_k dL/da[k] * (x[i] - grid[g]) per row
};

// A tile of the basis: token rows [r0, r1) x channels [c0, c1), stored row-major with leading dim `ld`
// (the row r0 first; columns (c - c0) * G + g).
struct KanTile {
  int64_t r0, r1, c0, c1, ld;
};

struct RswafKanKernelTable {
  const char* isa;
  int vector_bytes;
  // The basis of the tile into `phi` (acc).
  void (*basis)(const KanParams&, const KanTile&, void* phi, void* scratch);
  // `dphi` (the tile, acc) holds dL/dphi (and may be used as scratch); with `phi` non-null the basis is
  // written there too. Writes dx of the tile and adds to the tile rows' dgrid_rows and dinv_rows (those set).
  void (*backward)(const KanParams&, const KanTile&, void* dphi, void* phi, void* scratch);
  int64_t (*scratch_bytes)(const KanParams&);
  GemmKernels gemm;
};

}  // namespace medkernels::cpu
