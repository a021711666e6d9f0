// Multi-tensor operations on host memory: the CPU back end of gradfast.
#pragma once
#include <cstdint>

#include "../gradfast/adam_math.h"
#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"
#include "../gradfast/tensor_list.h"

namespace gradfast::cpu {

// Norms of every tensor and of all of them together, with torch's semantics:
//   per_tensor_out[n]  each tensor's norm rounded to dt, stored in the math type
//                      (float for fp32/fp16/bf16, double for fp64)
//   total_out          the norm of the per-tensor norms, stored in dt
//   coef_out           optional (nullptr to skip): torch's clip coefficient for max_norm,
//                      stored in the math type
void multi_norm(const TensorList& tensors, DType dt, NormKind kind, double p,
                void* per_tensor_out, void* total_out, void* coef_out, double max_norm,
                int num_threads);

// x *= coef for every tensor; coef points at one value of the math type.
void multi_scale(const TensorList& tensors, DType dt, const void* coef, int num_threads);

// x = clamp(x, lo, hi) for every tensor.
void multi_clamp(const TensorList& tensors, DType dt, double lo, double hi, int num_threads);

// The tensors of one fused Adam step, all of one dtype in host memory. Tensor i is
// p[i], g[i], m[i] (exp_avg), v[i] (exp_avg_sq), vmax[i] (max_exp_avg_sq, amsgrad only),
// each numels[i] elements in the same memory layout, and step[i], its fp32 step count.
struct AdamLists {
  void* const* p;
  void* const* g;
  void* const* m;
  void* const* v;
  void* const* vmax;  // nullptr without amsgrad
  float* const* step;
  const int64_t* numels;
  int64_t n;
};

// One fused Adam/AdamW step over all tensors: decides on skipping and the clip coefficient
// from `control` (step_decide), then for every tensor increments its step, computes its bias
// corrections and updates it in one pass per chunk, chunks spread over the threads. A
// skipped step changes nothing except *skipped_counter (if given), which is incremented.
// flags.unscale must be set exactly when control.grad_scale is.
void adam_step(const AdamLists& lists, DType dt, const AdamHyper& hyper, const AdamFlags& flags,
               const StepControl& control, int64_t* skipped_counter, int num_threads);

}  // namespace gradfast::cpu
