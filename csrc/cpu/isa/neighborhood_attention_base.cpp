// Neighborhood-attention kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../neighborhood_attention_kernel.h"

namespace medkernels::cpu {
const NaKernelTable& na_kernels_base() { return base::kNaTable; }
}  // namespace medkernels::cpu
