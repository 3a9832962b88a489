// Causal-conv1d kernels for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; see CMakeLists.txt).
#define MK_ISA avx2
#define MK_VEC_BYTES 32
#include "../causal_conv1d_kernel.h"

namespace medkernels::cpu {
const ConvKernelTable& conv_kernels_avx2() { return avx2::kConvTable; }
}  // namespace medkernels::cpu
