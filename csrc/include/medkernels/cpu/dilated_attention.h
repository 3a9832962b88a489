// D-Former 3D dilated attention CPU kernel interface: plain structs and function pointers, no torch.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// A (batch, X0, X1, X2, heads, dim) tensor read in place: element strides; the last dim is contiguous.
struct DaView {
  const void* ptr = nullptr;
  int64_t sb = 0, s[3] = {0, 0, 0}, sh = 0;
};

// Group g (per axis) holds the coordinates g * grp_step + m * pos_step < size for m < group:
// local scope grp_step = group, pos_step = 1; global (dilated) scope grp_step = 1, pos_step = interval.
// Tokens of a group are ordered row-major over (m0, m1, m2); coordinates past the size (padding) are
// left out, so padded keys never enter a softmax and padded queries are never computed.
struct DaParams {
  ScalarKind dtype = ScalarKind::Float32;  // storage of q/k/v/out/grads
  ScalarKind acc = ScalarKind::Float32;    // Float32, or Float64 for float64 storage
  int64_t batch = 0, heads = 0, dim = 0, dpad = 0;
  int64_t size[3] = {1, 1, 1}, group[3] = {1, 1, 1}, ngroups[3] = {1, 1, 1};
  int64_t grp_step[3] = {1, 1, 1}, pos_step[3] = {1, 1, 1};
  int64_t block_m = 64, block_n = 256;  // queries per block; keys per online-softmax step
  double scale = 1.0;
  DaView q, k, v;
  void* out = nullptr;  // (batch, X0, X1, X2, heads, dim) contiguous, storage dtype
  void* lse = nullptr;  // (batch, X0, X1, X2, heads) contiguous, acc dtype
  // backward
  DaView dout, o;
  const void* lse_in = nullptr;    // (batch, X0, X1, X2, heads) contiguous, acc dtype
  const void* grad_lse = nullptr;  // optional, same layout
  void* dq = nullptr;              // (batch, X0, X1, X2, heads, dim), token stride grad_tok_stride
  void* dk = nullptr;
  void* dv = nullptr;
  // Elements between consecutive tokens of dq/dk/dv: heads * dim when they are separate contiguous
  // tensors, 3 * heads * dim when they are the slices of one packed (..., 3, heads, dim) gradient.
  int64_t grad_tok_stride = 0;
};

struct DilatedAttentionKernelTable {
  const char* isa;
  int vector_bytes;
  // Tasks: batch * groups * heads, in that order (heads fastest).
  void (*fwd)(const DaParams&, int64_t task_begin, int64_t task_end, void* scratch);
  void (*bwd)(const DaParams&, int64_t task_begin, int64_t task_end, void* scratch);
  int64_t (*scratch_bytes)(const DaParams&, bool backward);
};

}  // namespace medkernels::cpu
