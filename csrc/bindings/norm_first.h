// The CPU optimizer entry points' optional first pass: the global norm of the step's
// gradients, written where the step's StepControl reads it (control.total_norm).
//
// When one (device, dtype) group holds every gradient of a step, the norm and the update
// are one native call instead of two: the same multi_norm over the same gradients, then
// the same update, so the results are bitwise those of the two calls, with one Python to
// C++ crossing (and one GIL release) fewer per step.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "../cpu/cpu_ops.h"
#include "../gradfast/step_control.h"

namespace gradfast::bindings {

// norm_kind < 0: no norm (the caller computed control.total_norm, or needs none).
inline void norm_into_control(void* const* grads, const int64_t* numels, int64_t n, DType dt,
                              int norm_kind, double norm_p, const StepControl& control,
                              int num_threads) {
  if (norm_kind < 0) return;
  if (control.total_norm == nullptr || control.total_dtype != (int)dt)
    throw std::invalid_argument(
        "norm_kind given: control.total_norm must be an output of the grads' dtype");
  cpu::multi_norm(TensorList{grads, numels, n}, dt, (NormKind)norm_kind, norm_p, nullptr,
                  const_cast<void*>(control.total_norm), nullptr, 1.0, num_threads);
}

}  // namespace gradfast::bindings
