// Neighborhood attention CPU kernel interface: plain structs and function pointers, no torch.
//
// The torch side (csrc/cpu/neighborhood_attention.cpp) normalises every problem to three spatial
// axes (missing axes have length 1 and kernel 1), builds the per-axis window tables from natten's
// rules, and copies q/k/v into canonical zero-padded buffers; the kernels
// (csrc/cpu/neighborhood_attention_kernel.h) only walk tables and buffers.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// Per axis a: for a query coordinate x, its keys are win_start[x] + m * dil for m < win_len[x],
// and key m has relative-position-bias index rpb_base[x] + m (in 0 .. 2K-2). For a key coordinate
// y, the queries that attend to it are inv_start[y] + n * dil for n < inv_len[y].
struct NaAxis {
  int64_t L = 1, K = 1, dil = 1, R = 1;  // R = 2K - 1, the bias extent
  const int64_t* win_start = nullptr;
  const int64_t* win_len = nullptr;
  const int64_t* rpb_base = nullptr;
  const int64_t* inv_start = nullptr;
  const int64_t* inv_len = nullptr;
};

// Canonical buffers, all contiguous, in acc precision (float, or double for float64 inputs):
//   q (batch, heads, tokens, dpad), k (batch, kv_heads, tokens, dpad), v (batch, kv_heads, tokens, dvpad),
// tokens row-major over the three axes; head dims zero-padded to whole vectors.
struct NaParams {
  ScalarKind acc = ScalarKind::Float32;  // Float32 or Float64
  int64_t batch = 0, heads = 0, kv_heads = 0, tokens = 0;
  int64_t dpad = 0, dvpad = 0;
  int64_t kprod = 1;  // K0 * K1 * K2: window slots per query
  NaAxis axis[3];
  int64_t tile = 64;  // queries (or keys) per task

  double scale = 1.0;  // fused: the softmax scale (q below is already multiplied by it)
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* rpb = nullptr;    // (heads, R0, R1, R2), optional
  int64_t n_add = 0;            // additional keys/values attended by every query
  const void* add_k = nullptr;  // (batch, kv_heads, n_add, dpad)
  const void* add_v = nullptr;  // (batch, kv_heads, n_add, dvpad)

  // forward outputs / backward inputs
  void* out = nullptr;  // (batch, heads, tokens, dvpad)
  void* lse = nullptr;  // (batch, heads, tokens)
  // backward
  const void* dout = nullptr;   // (batch, heads, tokens, dvpad)
  const void* drow = nullptr;   // (batch, heads, tokens): <dout, out> per query
  void* dq = nullptr;           // (batch, heads, tokens, dpad)
  void* dk = nullptr;           // (batch, kv_heads, tokens, dpad)
  void* dv = nullptr;           // (batch, kv_heads, tokens, dvpad)
  void* drpb_part = nullptr;    // (query tasks, R0 * R1 * R2): per task, reduced in task order
  void* dadd_k_part = nullptr;  // (query tasks, n_add, dpad)
  void* dadd_v_part = nullptr;  // (query tasks, n_add, dvpad)

  // unfused API: attn (batch, heads, tokens, kprod), slot (m0 * K1 + m1) * K2 + m2
  const void* attn = nullptr;
  void* attn_out = nullptr;
  const void* dattn = nullptr;
  void* dattn_out = nullptr;
};

struct NeighborhoodAttentionKernelTable {
  const char* isa;
  int vector_bytes;
  // Query tasks: (batch * heads * ceil(tokens / tile)); key tasks: (batch * kv_heads * ceil(tokens / tile)).
  void (*fwd)(const NaParams&, int64_t task_begin, int64_t task_end, void* scratch);
  void (*bwd_query)(const NaParams&, int64_t task_begin, int64_t task_end,
                    void* scratch);  // dq, bias/additional partials
  void (*bwd_key)(const NaParams&, int64_t task_begin, int64_t task_end, void* scratch);  // dk, dv
  void (*qk)(const NaParams&, int64_t task_begin, int64_t task_end, void* scratch);       // attn_out (+rpb)
  void (*qk_bwd_query)(const NaParams&, int64_t, int64_t, void*);  // dq from dattn, bias partials
  void (*qk_bwd_key)(const NaParams&, int64_t, int64_t, void*);    // dk from dattn
  void (*av)(const NaParams&, int64_t, int64_t, void*);            // out from attn, v
  void (*av_bwd_query)(const NaParams&, int64_t, int64_t, void*);  // dattn_out from dout, v
  void (*av_bwd_key)(const NaParams&, int64_t, int64_t, void*);    // dv from attn, dout
  int64_t (*scratch_bytes)(const NaParams&);
};

}  // namespace medkernels::cpu
