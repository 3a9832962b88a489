// Run-time choice of the CPU instruction set for the kernel bodies.
#pragma once

#include <string>
#include <vector>

#include "medkernels/cpu/causal_conv1d.h"
#include "medkernels/cpu/dct.h"
#include "medkernels/cpu/dilated_attention.h"
#include "medkernels/cpu/neighborhood_attention.h"
#include "medkernels/cpu/point_cloud.h"
#include "medkernels/cpu/selective_scan.h"
#include "medkernels/cpu/rswaf_kan.h"

namespace medkernels::cpu {

// Instruction sets this build has kernels for AND this CPU can run, widest first.
std::vector<std::string> supported_isas();
// The one in use: the widest supported, unless MEDKERNELS_CPU_ISA or set_isa() picked another.
std::string active_isa();
// Selects an instruction set by name ("base", "avx2"); throws std::invalid_argument otherwise.
void set_isa(const std::string& name);

const SelectiveScanKernelTable& selective_scan_kernels();
const NaKernelTable& na_kernels();
const ConvKernelTable& conv_kernels();
const DaKernelTable& da_kernels();
const Sep2dKernelTable& sep2d_kernels();
const PointCloudKernelTable& point_cloud_kernels();
const KanKernelTable& kan_kernels();

}  // namespace medkernels::cpu
