// What every optimizer step decides before touching an element, shared by every fused
// optimizer (Adam, SGD, ...) on the CPU and on CUDA: whether to skip the step (GradScaler
// found an inf, or the global grad norm is not finite with skip_nonfinite), the learning
// rate (a number, or read from a tensor), GradScaler's scale and the clip coefficient.
// Every input is a pointer into the step's device memory (nullptr when unused), so the
// decision needs no host synchronisation: each CUDA block (or the CPU caller) makes it
// itself from the same bytes, and so gets the same answer.
#pragma once
#include <cmath>
#include <cstdint>

#include "dtype.h"
#include "macros.h"
#include "norm_math.h"

namespace gradfast {

// Reads a 0-d value of dtype code `code` (fp32/fp64/fp16/bf16) as a double.
GF_HD double read_scalar(const void* ptr, int code) {
  switch ((DType)code) {
    case DType::Float32: return (double)*static_cast<const float*>(ptr);
    case DType::Float64: return *static_cast<const double*>(ptr);
    case DType::Float16: return (double)half_to_float(static_cast<const Half*>(ptr)->bits);
    case DType::BFloat16: return (double)bf16_to_float(static_cast<const BFloat16*>(ptr)->bits);
  }
  return 0.0;
}

template <typename A>
GF_HD bool is_finite_value(A x) {
  return x == x && x - x == (A)0;  // false for NaN and +-inf, without <cmath> isfinite
}

// The per-step inputs of the decision (a pointer of nullptr means "absent").
struct StepControl {
  const void* lr_ptr;       // lr as a tensor (fp32 or fp64), or nullptr to use lr
  int lr_dtype;
  double lr;
  const float* grad_scale;  // GradScaler's scale, or nullptr
  const float* found_inf;   // GradScaler's found_inf, or nullptr
  const void* total_norm;   // global grad norm (of the grads as stored), or nullptr
  int total_dtype;
  bool clip;                // clip to max_norm (needs total_norm)
  double max_norm;
  const void* max_norm_ptr; // a device threshold (e.g. AutoClip's), or nullptr to use max_norm
  int max_norm_dtype;
  bool skip_nonfinite;      // skip the step when the (unscaled) total norm is not finite
};

struct StepDecision {
  bool skip;
  double lr;
  double grad_scale;  // 1 when not unscaling
  double clip_coef;   // in the math type of total_dtype (rounded as torch does); 1 when off
  bool clip;
};

// torch's clip coefficient for the total norm read from memory, with the total first
// divided by the grad scale when the grads are still scaled (GradScaler): the clip applies
// to the unscaled grads.
// A threshold given as a tensor is applied as torch evaluates
// clamp(threshold / (total + 1e-6), max=1) on two tensors: a true division.
template <typename TT>
GF_HD double clip_coef_for_total(double total, double scale, double max_norm, bool tensor_max) {
  using A = math_t<TT>;
  A t = (A)total;
  if (scale != 1.0) t = round_to<TT>((A)((double)t / scale));
  if (!tensor_max) return (double)clip_coefficient<TT>(t, max_norm);
  const A denom = round_to<TT>(t + (A)1e-6);
  const A coef = round_to<TT>((A)max_norm / denom);
  return (double)((coef > (A)1) ? (A)1 : coef);  // NaN propagates, as torch.clamp
}

GF_HD StepDecision step_decide(const StepControl& c) {
  StepDecision d;
  d.lr = c.lr_ptr ? read_scalar(c.lr_ptr, c.lr_dtype) : c.lr;
  d.grad_scale = c.grad_scale ? (double)*c.grad_scale : 1.0;
  d.skip = c.found_inf != nullptr && *c.found_inf != 0.0f;
  d.clip_coef = 1.0;
  d.clip = c.clip && c.total_norm != nullptr;
  if (c.total_norm && (c.clip || c.skip_nonfinite)) {
    const double total = read_scalar(c.total_norm, c.total_dtype);
    if (c.skip_nonfinite && !is_finite_value(total / d.grad_scale)) d.skip = true;
    if (c.clip) {
      const bool tm = c.max_norm_ptr != nullptr;
      const double mx = tm ? read_scalar(c.max_norm_ptr, c.max_norm_dtype) : c.max_norm;
      const double sc = d.grad_scale;
      switch ((DType)c.total_dtype) {
        case DType::Float32: d.clip_coef = clip_coef_for_total<float>(total, sc, mx, tm); break;
        case DType::Float64: d.clip_coef = clip_coef_for_total<double>(total, sc, mx, tm); break;
        case DType::Float16: d.clip_coef = clip_coef_for_total<Half>(total, sc, mx, tm); break;
        case DType::BFloat16: d.clip_coef = clip_coef_for_total<BFloat16>(total, sc, mx, tm); break;
      }
    }
  }
  return d;
}

}  // namespace gradfast
