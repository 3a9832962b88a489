// Torch-side helpers shared by the CPU ops (not included by the per-instruction-set kernel files).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "medkernels/cpu/selective_scan.h"  // ScalarKind
#include "medkernels/stable.h"

namespace medkernels::cpu {

using medkernels::Tensor;

inline ScalarKind kind_of(ScalarType t, const char* op) {
  switch (t) {
    case kFloat: return ScalarKind::Float32;
    case kDouble: return ScalarKind::Float64;
    case kHalf: return ScalarKind::Float16;
    case kBFloat16: return ScalarKind::BFloat16;
    default: MK_CHECK(false, op, ": unsupported dtype ", t);
  }
  return ScalarKind::Float32;
}

// Run f(begin, end) over [begin, end) on torch's intra-op threads, in chunks of at least `grain`.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  torch::stable::parallel_for(begin, end, grain, f);
}

inline int64_t num_threads() { return int64_t(torch::stable::get_num_threads()); }

// Per-task scratch for the kernels: one slot per torch thread, allocated through torch (memory profilers see it)
// and claimed by each parallel_for task for the call it makes (`kern.run(..., scratch.for_thread())`: the claim
// lives until the end of that full expression). The stable ABI has no thread index, so slots are claimed, not
// indexed; a task that finds none free (a parallel region nested in another) gets its own buffer.
class Scratch {
 public:
  explicit Scratch(int64_t bytes)
      : stride_((bytes + 127) / 64 * 64), slots_(num_threads()), busy_(new std::atomic<bool>[slots_]) {
    for (int64_t i = 0; i < slots_; ++i) busy_[i].store(false, std::memory_order_relaxed);
    buf_ = cpu_bytes(slots_ * stride_ + 64);
    base_ = (reinterpret_cast<uintptr_t>(buf_.data_ptr()) + 63) & ~uintptr_t(63);
  }

  class Claim {
   public:
    Claim(Scratch& s) : s_(s) {  // NOLINT
      for (int64_t i = 0; i < s.slots_; ++i)
        if (!s.busy_[i].exchange(true, std::memory_order_acquire)) {
          slot_ = i;
          ptr_ = reinterpret_cast<void*>(s.base_ + uintptr_t(i) * uintptr_t(s.stride_));
          return;
        }
      own_.reset(new (std::align_val_t(64)) unsigned char[s.stride_]);
      ptr_ = own_.get();
    }
    ~Claim() {
      if (slot_ >= 0) s_.busy_[slot_].store(false, std::memory_order_release);
    }
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    operator void*() const { return ptr_; }  // NOLINT: passed straight to the kernel

   private:
    struct Free {
      void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(64)); }
    };
    Scratch& s_;
    int64_t slot_ = -1;
    void* ptr_ = nullptr;
    std::unique_ptr<unsigned char[], Free> own_;
  };
  Claim for_thread() { return Claim(*this); }

 private:
  int64_t stride_, slots_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
  Tensor buf_;
  uintptr_t base_ = 0;
};

}  // namespace medkernels::cpu
