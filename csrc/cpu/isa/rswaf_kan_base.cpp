// FasterKAN RSWAF basis kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../rswaf_kan_kernel.h"

namespace medkernels::cpu {
const KanKernelTable& kan_kernels_base() { return base::kKanTable; }
}  // namespace medkernels::cpu
