// The storage dtypes the kernels read and write, named without torch: one enum for the CPU and CUDA code.
#pragma once

#include <cstdint>

namespace medkernels {

// Compute is float32, or float64 when the storage is float64 (the CUDA kernels take no float64).
enum class ScalarKind : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace medkernels
