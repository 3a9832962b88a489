// Selective-scan CUDA kernel interface: plain structs, no torch (keeps .cu compiles fast).
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cuda {

constexpr int kScanThreads = 128;
constexpr int kScanItems = 8;
constexpr int kScanChunk = kScanThreads * kScanItems;  // tokens between saved states
constexpr int kScanMaxState = 256;

struct ScanCudaParams {
  ScalarKind dtype = ScalarKind::Float32;  // u, delta, z, variable B/C, out, du, ddelta, dz (no Float64)
  int64_t batch = 0, dim = 0, seqlen = 0, dstate = 0, n_chunks = 0;
  int64_t groups_B = 0, groups_C = 0;  // 0: fixed (dim, dstate) float32
  bool softplus = false;
  // element strides; the seqlen stride of u, delta, z, grad_out is 1
  const void* u = nullptr;
  int64_t u_b = 0, u_d = 0;
  const void* delta = nullptr;
  int64_t delta_b = 0, delta_d = 0;
  const void* z = nullptr;
  int64_t z_b = 0, z_d = 0;
  const float* A = nullptr;  // (dim, dstate) contiguous
  const void* B = nullptr;   // variable: (batch, groups, dstate, seqlen) with strides; fixed: float (dim, dstate)
  int64_t B_b = 0, B_g = 0, B_n = 0, B_l = 0;
  const void* C = nullptr;
  int64_t C_b = 0, C_g = 0, C_n = 0, C_l = 0;
  const float* D = nullptr;              // (dim,), optional
  const float* delta_bias = nullptr;     // (dim,), optional
  const float* initial_state = nullptr;  // (batch, dim, dstate) contiguous, optional
  void* out = nullptr;                   // (batch, dim, seqlen) contiguous
  float* last_state = nullptr;           // (batch, dim, dstate)
  float* checkpoints = nullptr;          // (batch, dim, n_chunks, dstate): the state before each chunk
  // backward
  const void* grad_out = nullptr;
  int64_t grad_out_b = 0, grad_out_d = 0;
  const float* grad_last = nullptr;  // (batch, dim, dstate), optional
  void* du = nullptr;                // (batch, dim, seqlen) contiguous
  void* ddelta = nullptr;
  void* dz = nullptr;
  float* dA_part = nullptr;  // (batch, dim, dstate): per row, summed over batch by the caller
  float* dB = nullptr;       // variable: (batch, groups, dstate, seqlen), zeroed, atomics;
                             // fixed: (batch, dim, dstate)
  float* dC = nullptr;
  float* dD_part = nullptr;     // (batch, dim)
  float* dbias_part = nullptr;  // (batch, dim)
  float* dinit = nullptr;       // (batch, dim, dstate)
  // Deterministic mode (> 0): each block runs this many consecutive channels of one B/C group and adds
  // their variable dB/dC into its own partial rows (batch, dim / det_channels, dstate, seqlen), which the
  // caller sums in order; 0: one channel per block, variable dB/dC accumulated with atomics.
  int64_t det_channels = 0;
};

// `stream` is a cudaStream_t. Return a cudaError_t as int (0 = success).
int selective_scan_fwd_cuda(const ScanCudaParams& p, void* stream);
int selective_scan_bwd_cuda(const ScanCudaParams& p, void* stream);

}  // namespace medkernels::cuda
