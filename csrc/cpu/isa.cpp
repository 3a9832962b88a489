#include "medkernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace medkernels::cpu {
namespace {

enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kCount = 4 };
const char* const kNames[kCount] = {"base", "avx2", "avx512", "avx512bf16"};

bool cpu_has(Isa isa) {
  switch (isa) {
    case kBase: return true;
    case kAvx2:
#if defined(MEDKERNELS_HAVE_AVX2)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case kAvx512:
      // GCC's __builtin_cpu_supports reports the AVX-512 features only when the OS saves the zmm and mask
      // registers (XCR0 bits 5-7 with 1-2, tested in libgcc's cpuinfo), so no separate XGETBV check.
#if defined(MEDKERNELS_HAVE_AVX512)
      return cpu_has(kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
    case kAvx512Bf16:  // AVX-512 plus the BF16 dot products (vdpbf16ps)
#if defined(MEDKERNELS_HAVE_AVX512BF16)
      return cpu_has(kAvx512) && __builtin_cpu_supports("avx512bf16");
#else
      return false;
#endif
    default: return false;
  }
}

int widest() {
  for (int i = kCount - 1; i > 0; --i)
    if (cpu_has(Isa(i))) return i;
  return kBase;
}

int parse(const std::string& name) {
  for (int i = 0; i < kCount; ++i)
    if (name == kNames[i]) {
      if (!cpu_has(Isa(i)))
        throw std::invalid_argument("medkernels: CPU instruction set '" + name +
                                    "' is not supported by this CPU or this build");
      return i;
    }
  throw std::invalid_argument("medkernels: unknown CPU instruction set '" + name +
                              "' (expected 'base', 'avx2', 'avx512' or 'avx512bf16')");
}

int initial() {
  const char* env = std::getenv("MEDKERNELS_CPU_ISA");
  if (env == nullptr || *env == '\0') return widest();
  try {
    return parse(env);
  } catch (const std::invalid_argument&) {
    return widest();  // a bad environment value must not break import; set_isa() reports it
  }
}

std::atomic<int>& current() {
  static std::atomic<int> isa{initial()};
  return isa;
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = kCount - 1; i >= 0; --i)
    if (cpu_has(Isa(i))) out.emplace_back(kNames[i]);
  return out;
}

std::string active_isa() { return kNames[current().load()]; }

void set_isa(const std::string& name) { current().store(parse(name)); }

// Each family's kernel table for the instruction set in use (medkernels/cpu/families.def), read once per
// call. A family's avx512 table is its avx2 one where AVX-512 did not measure faster
// (MEDKERNELS_AVX512_FAMILIES, CMakeLists.txt; numbers in csrc/README.md), and its avx512bf16 table its avx512
// one unless it has bf16 dot-product kernels (MEDKERNELS_AVX512BF16_FAMILIES).
#if defined(MEDKERNELS_HAVE_AVX512BF16)
#define MK_PICK(get)                                 \
  if (isa == kAvx512Bf16) return get##_avx512bf16(); \
  if (isa == kAvx512) return get##_avx512();         \
  if (isa == kAvx2) return get##_avx2();
#elif defined(MEDKERNELS_HAVE_AVX512)
#define MK_PICK(get)                         \
  if (isa == kAvx512) return get##_avx512(); \
  if (isa == kAvx2) return get##_avx2();
#elif defined(MEDKERNELS_HAVE_AVX2)
#define MK_PICK(get) \
  if (isa == kAvx2) return get##_avx2();
#else
#define MK_PICK(get)
#endif
#define MK_FAMILY(family, Type)                        \
  const Type##KernelTable& family##_kernels() {        \
    [[maybe_unused]] const int isa = current().load(); \
    MK_PICK(family##_kernels)                          \
    return family##_kernels_base();                    \
  }
#include "medkernels/cpu/families.def"
#undef MK_FAMILY
#undef MK_PICK

}  // namespace medkernels::cpu
