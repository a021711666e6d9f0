// The table of per-ISA CPU range kernels. Each ISA translation unit (isa_*.cpp) compiles
// the same templates from isa_kernels_impl.h with its own target flags; the table for the
// best ISA the running CPU supports is picked once at run time, so a distributable build
// needs no -march=native.
#pragma once
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"

namespace gradfast::cpu {

struct CpuKernels {
  const char* isa;
  // Norm accumulator (before finalize) of x[0, n), in the dtype's math type (held exactly
  // in a double). Lanes and their combination order are fixed: the result depends on the
  // data only.
  double (*norm_range)(const void* x, int64_t n, DType dt, NormKind kind, double p);
  // x[i] = x[i] * coef, computed in the math type.
  void (*scale_range)(void* x, int64_t n, DType dt, double coef);
  // x[i] = clamp(x[i], lo, hi), NaN kept.
  void (*clamp_range)(void* x, int64_t n, DType dt, double lo, double hi);
};

const CpuKernels& kernels_generic();
const CpuKernels& kernels_avx2();
const CpuKernels& kernels_avx512();

// The table for the best ISA of this CPU (GRADFAST_CPU_ISA=generic|avx2|avx512 caps it).
const CpuKernels& best_kernels();

}  // namespace gradfast::cpu
