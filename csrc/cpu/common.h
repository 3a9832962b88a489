// Torch-side helpers shared by the CPU ops (not included by the per-instruction-set kernel files).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "medkernels/cpu/selective_scan.h"  // ScalarKind

namespace medkernels::cpu {

inline ScalarKind kind_of(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
  return ScalarKind::Float32;
}

// Per-thread scratch for the kernels, allocated through torch so memory profilers see it.
struct Scratch {
  at::Tensor buf;
  int64_t stride;
  explicit Scratch(int64_t bytes) : stride((bytes + 127) / 64 * 64) {
    buf = at::empty({int64_t(at::get_num_threads()) * stride + 64}, at::TensorOptions().dtype(at::kByte));
  }
  void* for_thread() {
    auto base = reinterpret_cast<uintptr_t>(buf.data_ptr<uint8_t>());
    base = (base + 63) & ~uintptr_t(63);
    return reinterpret_cast<void*>(base + uintptr_t(at::get_thread_num()) * uintptr_t(stride));
  }
};

}  // namespace medkernels::cpu
