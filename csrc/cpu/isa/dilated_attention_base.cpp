// Dilated-attention kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../dilated_attention_kernel.h"

namespace medkernels::cpu {
const DaKernelTable& da_kernels_base() { return base::kDaTable; }
}  // namespace medkernels::cpu
