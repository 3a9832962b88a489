// Causal-conv1d kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../causal_conv1d_kernel.h"

namespace medkernels::cpu {
const ConvKernelTable& conv_kernels_base() { return base::kConvTable; }
}  // namespace medkernels::cpu
