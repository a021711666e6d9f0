// One contiguous range of a fused SGD step (the argument of CpuKernels::sgd_range).
#pragma once
#include <cstdint>

#include "../gradfast/sgd_math.h"

namespace gradfast::cpu {

// Element i of each array is element i of the tensor.
struct SgdRange {
  void* p;
  void* g;
  void* buf;  // momentum buffer (momentum != 0 only)
  int64_t n;
};

}  // namespace gradfast::cpu
