// Separable 2D transform (the DCT-II and its inverse with cached cosine bases) CPU kernel interface:
// plain structs and function pointers, no torch.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// Separable 2D transform: out[b] = mh (oh x h) @ x[b] (h x w) @ mw^T (w x ow), per image.
struct Sep2dParams {
  ScalarKind acc = ScalarKind::Float32;  // Float32 or Float64 (x, bases and out share it)
  int64_t images = 0, h = 0, w = 0, oh = 0, ow = 0;
  const void* x = nullptr;    // (images, h, w) contiguous
  const void* mh = nullptr;   // (oh, h) contiguous
  const void* mwt = nullptr;  // (w, owpad): mw transposed, columns zero-padded to whole vectors
  int64_t owpad = 0;
  void* out = nullptr;  // (images, oh, ow) contiguous
};

struct DctKernelTable {
  const char* isa;
  int vector_bytes;
  // Tasks: images.
  void (*run)(const Sep2dParams&, int64_t image_begin, int64_t image_end, void* scratch);
  int64_t (*scratch_bytes)(const Sep2dParams&);
};

}  // namespace medkernels::cpu
