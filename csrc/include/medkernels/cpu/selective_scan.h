// The selective-scan CPU kernel interface: plain structs and function pointers, no torch.
//
// csrc/cpu/selective_scan.cpp (the torch side) validates tensors, allocates outputs and fills
// these structs; the kernel bodies (csrc/cpu/selective_scan_kernel.h) are compiled once per
// instruction set (generated per ISA from csrc/cpu/isa_kernels.cpp.in) and chosen at run time (csrc/cpu/isa.cpp).
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// ScalarKind is the storage dtype of u, delta, z, out and the data gradients; with float64 storage
// every "acc" pointer below points at double.

struct SelectiveScanFwdParams {
  int64_t batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int64_t dstate_pad = 0;  // dstate rounded up to a whole number of vectors
  int64_t chunk = 0;       // tokens per chunk; the state before each chunk is saved
  int64_t n_chunks = 0;    // ceil(seqlen / chunk)
  int64_t groups_B = 0;    // 0: B is the fixed (dim, N) parameter; else variable with this many groups
  int64_t groups_C = 0;
  ScalarKind dtype = ScalarKind::Float32;
  bool delta_softplus = false;

  // (batch, dim, seqlen) in dtype, unit stride along seqlen.
  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_dim_stride = 0;
  const void* delta = nullptr;
  int64_t delta_batch_stride = 0, delta_dim_stride = 0;
  const void* z = nullptr;  // optional
  int64_t z_batch_stride = 0, z_dim_stride = 0;

  const void* A = nullptr;  // acc (dim, dstate_pad), zero padded
  // acc, zero padded; fixed: (dim, dstate_pad); variable: (batch, groups, seqlen, dstate_pad)
  const void* B = nullptr;
  const void* C = nullptr;
  const void* D = nullptr;              // acc (dim,), optional
  const void* delta_bias = nullptr;     // acc (dim,), optional
  const void* initial_state = nullptr;  // acc (batch, dim, dstate) contiguous, optional

  // Multi-order scan (medkernels::multi_order_selective_scan_*): with `order` set, dim is
  // n_orders * channels and row (b, k * channels + c) scans channel c of u along ordering k: it reads
  // u[b, c, order[b, k, t]] and delta[b, row, order[b, k, t]] at step t (u, out and grad_out have
  // `channels` rows per batch, shared by the orderings). B and C are then variable with n_orders
  // groups and hold ONE ordering, (batch, seqlen, dstate_pad), already in that ordering's token order.
  const int64_t* order = nullptr;  // (batch, n_orders, seqlen), each row a permutation of 0..seqlen-1
  int64_t n_orders = 1;
  // acc (batch, channels, seqlen), original token order: the forward adds each ordering's output
  // to it, the backward each ordering's grad_u.
  void* order_sum = nullptr;

  void* out = nullptr;          // dtype (batch, dim, seqlen) contiguous; (batch, channels, seqlen) with order
  void* last_state = nullptr;   // acc (batch, dim, dstate) contiguous; optional with order
  void* checkpoints = nullptr;  // acc (batch, dim, n_chunks, dstate): the state before each chunk
};

struct SelectiveScanBwdParams {
  SelectiveScanFwdParams fwd;  // the problem; fwd.checkpoints holds the forward's saved states

  const void* grad_out = nullptr;  // dtype (batch, dim, seqlen), unit stride along seqlen
  int64_t grad_out_batch_stride = 0, grad_out_dim_stride = 0;
  const void* grad_last_state = nullptr;  // acc (batch, dim, dstate) contiguous, optional

  void* grad_u = nullptr;              // dtype (batch, dim, seqlen) contiguous
  void* grad_delta = nullptr;          // dtype (batch, dim, seqlen) contiguous
  void* grad_z = nullptr;              // dtype (batch, dim, seqlen) contiguous, when z is given
  void* grad_initial_state = nullptr;  // acc (batch, dim, dstate), when an initial state is given

  // Per (batch, channel) partial sums; the torch side reduces them over batch in a fixed order.
  void* part_A = nullptr;        // acc (batch, dim, dstate_pad)
  void* part_B_fixed = nullptr;  // acc (batch, dim, dstate_pad), when B is fixed
  void* part_C_fixed = nullptr;  // acc (batch, dim, dstate_pad), when C is fixed
  void* part_D = nullptr;        // acc (batch, dim), when D is given
  void* part_bias = nullptr;     // acc (batch, dim), when delta_bias is given

  // Variable B/C gradients sum over the channels of a group. Channels are cut into blocks that each
  // lie inside one group of B and one group of C; a task is one (batch, block) pair and writes its
  // own partial sum, which the torch side adds up per group in block order. No atomics, so the
  // result has the same bits on every run and for every thread count.
  int64_t n_blocks = 0;
  const int64_t* block_start = nullptr;  // n_blocks + 1 channel offsets
  void* part_B_var = nullptr;            // acc (batch, n_blocks, seqlen, dstate_pad), when B is variable
  void* part_C_var = nullptr;            // acc (batch, n_blocks, seqlen, dstate_pad), when C is variable
  // With fwd.order set, block_start cuts the `channels` of u, a task is one (batch, block) of one
  // ordering and part_B_var / part_C_var are (batch, n_blocks, seqlen, dstate_pad) for that
  // ordering, in its token order; grad_u goes to fwd.order_sum.
};

struct SelectiveScanKernelTable {
  const char* isa;
  int vector_bytes;  // dstate_pad is a multiple of vector_bytes / sizeof(acc)
  // Rows r in [begin, end) are (batch, channel) = (r / dim, r % dim).
  void (*fwd)(const SelectiveScanFwdParams&, int64_t row_begin, int64_t row_end, void* scratch);
  // Tasks t in [begin, end) are (batch, block) = (t / n_blocks, t % n_blocks).
  void (*bwd)(const SelectiveScanBwdParams&, int64_t task_begin, int64_t task_end, void* scratch);
  // Bytes of 64-byte aligned scratch one caller of fwd / bwd must pass.
  int64_t (*fwd_scratch_bytes)(const SelectiveScanFwdParams&);
  int64_t (*bwd_scratch_bytes)(const SelectiveScanBwdParams&);
  // Multi-order scan (fwd.order set), ordering k: rows r in [begin, end) are (batch, channel of u)
  // = (r / channels, r % channels), scanned along ordering k, the output added to order_sum.
  void (*fwd_multi)(const SelectiveScanFwdParams&, int64_t k, int64_t row_begin, int64_t row_end, void* scratch);
  // Tasks t in [begin, end) are (batch, block) = (t / n_blocks, t % n_blocks), along ordering k.
  void (*bwd_multi)(const SelectiveScanBwdParams&, int64_t k, int64_t task_begin, int64_t task_end, void* scratch);
};

}  // namespace medkernels::cpu
