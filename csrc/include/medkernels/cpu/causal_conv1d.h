// Causal conv1d CPU kernel interface: plain structs and function pointers, no torch.
#pragma once

#include <cstdint>

#include "medkernels/cpu/selective_scan.h"  // ScalarKind

namespace medkernels::cpu {

struct ConvParams {
  ScalarKind dtype = ScalarKind::Float32;  // storage of x, dout, out, dx, states; compute is float (double for Float64)
  int64_t batch = 0, dim = 0, seqlen = 0, width = 1;
  bool silu = false;
  const void* x = nullptr;  // (batch, dim, seqlen), unit stride along seqlen
  int64_t x_batch_stride = 0, x_dim_stride = 0;
  const void* weight = nullptr;          // acc (dim, width) contiguous
  const void* bias = nullptr;            // acc (dim,), optional
  const int64_t* seq_idx = nullptr;      // (batch, seqlen), optional
  const void* initial_states = nullptr;  // storage (batch, dim, width - 1) contiguous, optional
  void* out = nullptr;                   // storage (batch, dim, seqlen) contiguous
  void* final_states = nullptr;          // storage (batch, dim, width - 1), optional
  // backward
  const void* dout = nullptr;  // (batch, dim, seqlen), unit stride along seqlen
  int64_t dout_batch_stride = 0, dout_dim_stride = 0;
  const void* dfinal = nullptr;  // acc (batch, dim, width - 1), optional
  void* dx = nullptr;            // storage (batch, dim, seqlen)
  void* dinit = nullptr;         // storage (batch, dim, width - 1), when initial states are given
  void* dweight_part = nullptr;  // acc (batch, dim, width): per row, summed over batch by the caller
  void* dbias_part = nullptr;    // acc (batch, dim)
};

struct CausalConv1dKernelTable {
  const char* isa;
  int vector_bytes;
  void (*fwd)(const ConvParams&, int64_t row_begin, int64_t row_end, void* scratch);
  void (*bwd)(const ConvParams&, int64_t row_begin, int64_t row_end, void* scratch);
  int64_t (*scratch_bytes)(const ConvParams&);
};

}  // namespace medkernels::cpu
