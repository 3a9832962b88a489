// Separable 2D transform CPU kernel body: out = mh @ x @ mw^T per image (the DCT-II, its inverse, and
// their truncated / zero-filled variants, with the cosine bases built once on the torch side).
//
// Compiled once per instruction set from csrc/cpu/isa_kernels.cpp.in; no torch header here. Per image
// the row transform's result (h x ow) stays in a per-thread buffer between the two products, so
// nothing but x and out touches memory.
#pragma once

#include "medkernels/cpu/dct.h"
#include "medkernels/cpu/gemm.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

template <class T>
struct Sep2dBufs {
  T *tmp, *res;  // x @ mw^T (h x owpad); mh @ tmp (oh x owpad)
  uintptr_t end;
  Sep2dBufs(uintptr_t base, const Sep2dParams& p) {
    Carver c{base};
    tmp = c.take<T>(p.h * p.owpad);
    res = c.take<T>(p.oh * p.owpad);
    end = c.p;
  }
};

template <class T>
void sep2d_images(const Sep2dParams& p, int64_t i0, int64_t i1, void* scratch) {
  Sep2dBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const T* mh = static_cast<const T*>(p.mh);
  const T* mwt = static_cast<const T*>(p.mwt);
  for (int64_t i = i0; i < i1; ++i) {
    const T* x = static_cast<const T*>(p.x) + i * p.h * p.w;
    T* out = static_cast<T*>(p.out) + i * p.oh * p.ow;
    gemm<false>(p.h, p.owpad, p.w, x, p.w, 1, mwt, p.owpad, s.tmp, p.owpad);
    if (p.ow == p.owpad) {
      gemm<false>(p.oh, p.owpad, p.h, mh, p.h, 1, s.tmp, p.owpad, out, p.ow);
    } else {
      gemm<false>(p.oh, p.owpad, p.h, mh, p.h, 1, s.tmp, p.owpad, s.res, p.owpad);
      for (int64_t r = 0; r < p.oh; ++r)
        for (int64_t c = 0; c < p.ow; ++c) out[r * p.ow + c] = s.res[r * p.owpad + c];
    }
  }
}

void sep2d_entry(const Sep2dParams& p, int64_t i0, int64_t i1, void* scratch) {
  if (p.acc == ScalarKind::Float64)
    sep2d_images<double>(p, i0, i1, scratch);
  else
    sep2d_images<float>(p, i0, i1, scratch);
}
int64_t sep2d_scratch_bytes(const Sep2dParams& p) {
  return p.acc == ScalarKind::Float64 ? int64_t(Sep2dBufs<double>(0, p).end) : int64_t(Sep2dBufs<float>(0, p).end);
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const DctKernelTable kDctTable{MK_STR(MK_ISA), MK_VEC_BYTES, &sep2d_entry, &sep2d_scratch_bytes};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
