// Separable-2D (DCT) kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../dct_kernel.h"

namespace medkernels::cpu {
const Sep2dKernelTable& sep2d_kernels_base() { return base::kSep2dTable; }
}  // namespace medkernels::cpu
