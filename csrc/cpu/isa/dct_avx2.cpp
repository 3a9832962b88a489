// Separable-2D (DCT) kernels for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; see CMakeLists.txt).
#define MK_ISA avx2
#define MK_VEC_BYTES 32
#include "../dct_kernel.h"

namespace medkernels::cpu {
const Sep2dKernelTable& sep2d_kernels_avx2() { return avx2::kSep2dTable; }
}  // namespace medkernels::cpu
