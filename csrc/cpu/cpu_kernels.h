// The table of per-ISA CPU range kernels. Each ISA translation unit (isa_*.cpp) compiles
// the same templates from isa_kernels_impl.h with its own target flags; the table for the
// best ISA the running CPU supports is picked once at run time, so a distributable build
// needs no -march=native.
#pragma once
#include <cstdint>

#include "../gradfast/adam_math.h"
#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"
#include "sgd_range.h"

namespace gradfast::cpu {

// One contiguous range of an Adam step: element i of each array is element i of the tensor.
struct AdamRange {
  void* p;
  void* g;
  void* m;
  void* v;
  void* vmax;  // amsgrad only
  int64_t n;
};

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
  // One pass of the fused Adam step over a range (adam_math.h's adam_element per element).
  void (*adam_range)(const AdamRange& r, DType dt, const AdamFlags& f, const AdamScalars& s);
  // One pass of the fused SGD step over a range (sgd_math.h's sgd_element per element).
  void (*sgd_range)(const SgdRange& r, DType dt, const SgdFlags& f, const SgdScalars& s,
                    bool first);
};

const CpuKernels& kernels_generic();
const CpuKernels& kernels_avx2();
const CpuKernels& kernels_avx512();

// The table for the best ISA of this CPU (GRADFAST_CPU_ISA=generic|avx2|avx512 caps it).
const CpuKernels& best_kernels();

}  // namespace gradfast::cpu
