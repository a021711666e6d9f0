// Picks the CPU kernel table once, from what the running CPU supports.
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"

namespace gradfast::cpu {
namespace {

int isa_rank(const char* name) {
  if (std::strcmp(name, "avx512") == 0) return 2;
  if (std::strcmp(name, "avx2") == 0) return 1;
  return 0;
}

int supported_rank() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return 1;
#endif
  return 0;
}

}  // namespace

const CpuKernels& best_kernels() {
  static const CpuKernels& chosen = [] () -> const CpuKernels& {
    int rank = supported_rank();
    if (const char* cap = std::getenv("GRADFAST_CPU_ISA")) {
      const int want = isa_rank(cap);
      if (want < rank) rank = want;
    }
#if defined(__x86_64__) || defined(__i386__)
    if (rank == 2) return kernels_avx512();
    if (rank == 1) return kernels_avx2();
#endif
    return kernels_generic();
  }();
  return chosen;
}

}  // namespace gradfast::cpu
