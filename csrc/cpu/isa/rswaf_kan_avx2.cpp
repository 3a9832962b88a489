// FasterKAN RSWAF basis kernels for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; see CMakeLists.txt).
#define MK_ISA avx2
#define MK_VEC_BYTES 32
#include "../rswaf_kan_kernel.h"

namespace medkernels::cpu {
const KanKernelTable& kan_kernels_avx2() { return avx2::kKanTable; }
}  // namespace medkernels::cpu
