// Selective-scan kernels for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../selective_scan_kernel.h"

namespace medkernels::cpu {
const SelectiveScanKernelTable& selective_scan_kernels_base() { return base::kTable; }
}  // namespace medkernels::cpu
