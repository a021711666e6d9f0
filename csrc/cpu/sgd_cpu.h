// The fused SGD step on host memory (multi_sgd.cpp).
#pragma once
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/sgd_math.h"
#include "../gradfast/step_control.h"

namespace gradfast::cpu {

// The tensors of one fused SGD step, all of one dtype in host memory. Tensor i is p[i],
// g[i] and buf[i] (its momentum buffer; the array is nullptr without momentum), each
// numels[i] elements in the same memory layout. first[i] (nullptr, or an array whose
// entries may be nullptr) points at an int32 that is nonzero while tensor i has no momentum
// history: its next step that is not skipped initialises the buffer (buf = d, torch's first
// step) and zeroes the flag. A flag in memory rather than a host bool, so that a first step
// skipped on the device (GradScaler's found_inf, skip_nonfinite) leaves the next one first.
struct SgdLists {
  void* const* p;
  void* const* g;
  void* const* buf;
  int32_t* const* first;
  const int64_t* numels;
  int64_t n;
};

// One fused SGD step over all tensors: decides on skipping, the lr and the clip coefficient
// from `control` (step_decide), then updates every tensor in one pass per chunk, chunks
// spread over the threads (last chunk first). A skipped step changes nothing except
// *skipped_counter (if given), which is incremented. flags.unscale must be set exactly when
// control.grad_scale is.
void sgd_step(const SgdLists& lists, DType dt, const SgdHyper& hyper, const SgdFlags& flags,
              const StepControl& control, int64_t* skipped_counter, int num_threads);

}  // namespace gradfast::cpu
