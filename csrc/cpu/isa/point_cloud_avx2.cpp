// Point-cloud kernels (furthest point sampling, kNN) for AVX2 + FMA + F16C
// (compiled with -mavx2 -mfma -mf16c -ffp-contract=off; see CMakeLists.txt).
#define MK_ISA avx2
#define MK_VEC_BYTES 32
#include "../point_cloud_kernel.h"

namespace medkernels::cpu {
const PointCloudKernelTable& point_cloud_kernels_avx2() { return avx2::kPointCloudTable; }
}  // namespace medkernels::cpu
