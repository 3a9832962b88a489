#include "medkernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace medkernels::cpu {
namespace {

enum Isa : int { kBase = 0, kAvx2 = 1, kCount = 2 };
const char* const kNames[kCount] = {"base", "avx2"};

bool cpu_has(Isa isa) {
  switch (isa) {
    case kBase: return true;
    case kAvx2:
#if defined(MEDKERNELS_HAVE_AVX2)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
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
  throw std::invalid_argument("medkernels: unknown CPU instruction set '" + name + "' (expected 'base' or 'avx2')");
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

// Each family's kernel table for the instruction set in use (medkernels/cpu/families.def).
#if defined(MEDKERNELS_HAVE_AVX2)
#define MK_PICK(family) (current().load() == kAvx2 ? family##_avx2() : family##_base())
#else
#define MK_PICK(family) family##_base()
#endif
#define MK_FAMILY(family, Type) \
  const Type##KernelTable& family##_kernels() { return MK_PICK(family##_kernels); }
#include "medkernels/cpu/families.def"
#undef MK_FAMILY
#undef MK_PICK

}  // namespace medkernels::cpu
