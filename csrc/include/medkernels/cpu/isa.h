// Run-time choice of the CPU instruction set for the kernel bodies, and each kernel family's table for it.
#pragma once

#include <string>
#include <vector>

namespace medkernels::cpu {

// Instruction sets this build has kernels for AND this CPU can run, widest first.
std::vector<std::string> supported_isas();
// The one in use: the widest supported, unless MEDKERNELS_CPU_ISA or set_isa() picked another.
std::string active_isa();
// Selects an instruction set by name ("base", "avx2", "avx512", "avx512bf16"); throws std::invalid_argument otherwise.
void set_isa(const std::string& name);

// Per family (medkernels/cpu/families.def): <family>_kernels() is the table of the instruction set in use;
// <family>_kernels_<isa>() the one compiled for <isa>. The torch side includes medkernels/cpu/<family>.h for
// the table's definition. A family not compiled for AVX-512 returns its AVX2 table as its avx512 one, and one
// without bf16 dot-product kernels its avx512 table as its avx512bf16 one.
#define MK_FAMILY(family, Type)                       \
  struct Type##KernelTable;                           \
  const Type##KernelTable& family##_kernels();        \
  const Type##KernelTable& family##_kernels_base();   \
  const Type##KernelTable& family##_kernels_avx2();   \
  const Type##KernelTable& family##_kernels_avx512(); \
  const Type##KernelTable& family##_kernels_avx512bf16();
#include "medkernels/cpu/families.def"
#undef MK_FAMILY

}  // namespace medkernels::cpu
