// The storage dtypes the CPU kernels read and write, named without torch.
#pragma once

#include <cstdint>

namespace medkernels::cpu {

// Compute is float32, or float64 when the storage is float64.
enum class ScalarKind : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace medkernels::cpu
