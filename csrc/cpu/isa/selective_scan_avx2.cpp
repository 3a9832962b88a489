// Selective-scan kernels for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; see CMakeLists.txt).
#define MK_ISA avx2
#define MK_VEC_BYTES 32
#include "../selective_scan_kernel.h"

namespace medkernels::cpu {
const SelectiveScanKernelTable& selective_scan_kernels_avx2() { return avx2::kTable; }
}  // namespace medkernels::cpu
