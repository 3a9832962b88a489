// Point-cloud kernels (furthest point sampling, kNN) for the baseline instruction set (SSE2 on x86-64, NEON on arm64).
#define MK_ISA base
#define MK_VEC_BYTES 16
#include "../point_cloud_kernel.h"

namespace medkernels::cpu {
const PointCloudKernelTable& point_cloud_kernels_base() { return base::kPointCloudTable; }
}  // namespace medkernels::cpu
