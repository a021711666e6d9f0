// Per-element math of the fused Adam/AdamW step, shared by the CPU loops and the CUDA
// kernels (written once, compiled by the host compiler and by nvcc).
//
// It reproduces torch's fused CUDA kernel (aten fused_adam_utils.cuh, torch 2.13) to
// rounding:
//   - the math type M is fp32 for fp32/fp16/bf16 storage and fp64 for fp64 (torch's opmath);
//   - lr, betas, eps and weight decay are doubles, so the products and sums that mix them
//     with an M value are evaluated in double and rounded to M once (torch's `grad += param *
//     weight_decay`, `exp_avg = beta1 * exp_avg + (1 - beta1) * grad`, ... with an fp32 left
//     hand side);
//   - the bias corrections are computed in double from the fp32 step count and rounded to M:
//     bc1 = M(1 - beta1^step), bc2_sqrt = M(sqrt(1 - beta2^step)), step_size = M(lr / bc1);
//   - sqrt(v) / bc2_sqrt and step_size * m / denom are M operations.
// torch's fused CPU kernel does the same update entirely in M (with a lerp for exp_avg), so
// against it results agree to a few ulps, not bitwise.
//
// gradfast's additions, in this order within one element (documented in gradfast.optim):
//   g = grad / grad_scale              (GradScaler; the unscaled grad is what is stored back)
//   g = round_to_storage(g * clip)     (max_grad_norm: torch's clip_grad_norm_ writes the
//                                       clipped grad in the grad's dtype before its step)
//   g = -g                             (maximize)
//   g = g + weight_decay * p           (L2 mode, Adam's default)
//   g = g + l1_weight_decay * sign(p)  (L1, always coupled: it enters the moments)
//   p = p - lr * weight_decay * p      (decoupled mode, AdamW)
//   moments, bias correction, update  (torch's fused kernel)
#pragma once
#include <cmath>
#include <cstdint>

#include "dtype.h"
#include "norm_math.h"
#include "macros.h"

namespace gradfast {

enum class WeightDecayMode : int { None = 0, L2 = 1, Decoupled = 2 };

// Per-step scalars of one tensor, all held in doubles. step_size, bc2_sqrt and clip_coef
// hold values of the math type M exactly (they were rounded to M when computed).
struct AdamScalars {
  double beta1, beta2;
  double one_minus_beta1, one_minus_beta2;  // 1 - beta, evaluated in double as torch does
  double eps;
  double weight_decay;  // L2 coefficient (L2 mode)
  double lr_wd;         // lr * weight_decay (decoupled mode)
  double l1;            // l1_weight_decay
  double grad_sign;     // -1 with maximize, else 1 (exact either way)
  double grad_scale;    // GradScaler's scale (unscale mode only)
  double clip_coef;     // clip coefficient in M (1 when not clipping)
  double step_size;     // M(lr / M(1 - beta1^step))
  double bc2_sqrt;      // M(sqrt(1 - beta2^step))
  bool clip;            // whether clip_coef applies (matters only with unscaling)
};

// Compile-time (CPU) or run-time (CUDA) switches of the element function.
struct AdamFlags {
  bool amsgrad;
  WeightDecayMode wd;
  bool l1;
  bool unscale;  // divide the grad by grad_scale and store the unscaled grad back
};

// The bias corrections and step size of torch's fused kernel for a step count (already
// incremented) of one tensor.
template <typename M>
GF_HD void adam_bias_correction(double lr, double beta1, double beta2, float step,
                                M& step_size, M& bc2_sqrt) {
  const double bc1 = 1.0 - std::pow(beta1, (double)step);
  const double bc2 = 1.0 - std::pow(beta2, (double)step);
  const M bc1_m = (M)bc1;
  bc2_sqrt = (M)std::sqrt(bc2);
  step_size = (M)(lr / (double)bc1_m);
}

template <typename M>
GF_HD M sign_of(M x) {
  return (M)((x > (M)0) - (x < (M)0));
}

// One element of the step, on values already loaded into the math type. On return p, m,
// v (and vmax with amsgrad) hold the new values to store; g holds the unscaled gradient
// (to store back in unscale mode). T is the storage type (for the clip rounding).
template <typename T>
GF_HD void adam_element(const AdamFlags& f, const AdamScalars& s, math_t<T>& p, math_t<T>& g,
                        math_t<T>& m, math_t<T>& v, math_t<T>& vmax) {
  using M = math_t<T>;
  using D = double;
  if (f.unscale) g = (M)((D)g / s.grad_scale);
  M gr = g;
  if (!f.unscale || s.clip) gr = round_to<T>(gr * (M)s.clip_coef);
  gr = gr * (M)s.grad_sign;
  if (f.wd == WeightDecayMode::L2) gr = (M)((D)gr + (D)p * s.weight_decay);
  if (f.l1) gr = (M)((D)gr + s.l1 * (D)sign_of(p));
  if (f.wd == WeightDecayMode::Decoupled) p = (M)((D)p - s.lr_wd * (D)p);
  m = (M)(s.beta1 * (D)m + s.one_minus_beta1 * (D)gr);
  v = (M)(s.beta2 * (D)v + s.one_minus_beta2 * (D)gr * (D)gr);
  M vv = v;
  if (f.amsgrad) {
    vmax = (vmax < v) ? v : vmax;  // std::max(vmax, v), as torch
    vv = vmax;
  }
  const M denom = (M)((D)(std::sqrt(vv) / (M)s.bc2_sqrt) + s.eps);
  p = p - (M)s.step_size * m / denom;
}

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

// What every step needs before touching an element: whether to skip (GradScaler found an
// inf, or the global grad norm is not finite with skip_nonfinite), and the clip coefficient.
// All inputs are pointers into the step's device memory (nullptr when unused), so that the
// decision needs no host synchronisation.
struct AdamControl {
  const void* lr_ptr;       // lr as a tensor (fp32 or fp64), or nullptr to use lr
  int lr_dtype;
  double lr;
  const float* grad_scale;  // GradScaler's scale, or nullptr
  const float* found_inf;   // GradScaler's found_inf, or nullptr
  const void* total_norm;   // global grad norm (of the grads as stored), or nullptr
  int total_dtype;
  bool clip;                // clip to max_norm (needs total_norm)
  double max_norm;
  bool skip_nonfinite;      // skip the step when the (unscaled) total norm is not finite
};

struct AdamDecision {
  bool skip;
  double lr;
  double grad_scale;  // 1 when not unscaling
  double clip_coef;   // in the math type of total_dtype (rounded as torch does); 1 when off
  bool clip;
};

// torch's clip coefficient for the total norm read from memory, with the total first
// divided by the grad scale when the grads are still scaled (GradScaler): the clip applies
// to the unscaled grads.
template <typename TT>
GF_HD double adam_clip_coef_t(double total, double scale, double max_norm) {
  using A = math_t<TT>;
  A t = (A)total;
  if (scale != 1.0) t = round_to<TT>((A)((double)t / scale));
  return (double)clip_coefficient<TT>(t, max_norm);
}

GF_HD AdamDecision adam_decide(const AdamControl& c) {
  AdamDecision d;
  d.lr = c.lr_ptr ? read_scalar(c.lr_ptr, c.lr_dtype) : c.lr;
  d.grad_scale = c.grad_scale ? (double)*c.grad_scale : 1.0;
  d.skip = c.found_inf != nullptr && *c.found_inf != 0.0f;
  d.clip_coef = 1.0;
  d.clip = c.clip && c.total_norm != nullptr;
  if (c.total_norm && (c.clip || c.skip_nonfinite)) {
    const double total = read_scalar(c.total_norm, c.total_dtype);
    if (c.skip_nonfinite && !is_finite_value(total / d.grad_scale)) d.skip = true;
    if (c.clip) {
      switch ((DType)c.total_dtype) {
        case DType::Float32: d.clip_coef = adam_clip_coef_t<float>(total, d.grad_scale, c.max_norm); break;
        case DType::Float64: d.clip_coef = adam_clip_coef_t<double>(total, d.grad_scale, c.max_norm); break;
        case DType::Float16: d.clip_coef = adam_clip_coef_t<Half>(total, d.grad_scale, c.max_norm); break;
        case DType::BFloat16: d.clip_coef = adam_clip_coef_t<BFloat16>(total, d.grad_scale, c.max_norm); break;
      }
    }
  }
  return d;
}

// The group-wide hyperparameters of one launch.
struct AdamHyper {
  double beta1, beta2, eps, weight_decay, l1;
  bool maximize;
};

// Per-tensor scalars for a step count (already incremented) of a tensor of storage dtype T.
template <typename T>
GF_HD AdamScalars adam_scalars(const AdamHyper& h, const AdamDecision& d, float step) {
  using M = math_t<T>;
  AdamScalars s;
  s.beta1 = h.beta1;
  s.beta2 = h.beta2;
  s.one_minus_beta1 = 1.0 - h.beta1;
  s.one_minus_beta2 = 1.0 - h.beta2;
  s.eps = h.eps;
  s.weight_decay = h.weight_decay;
  s.lr_wd = d.lr * h.weight_decay;
  s.l1 = h.l1;
  s.grad_sign = h.maximize ? -1.0 : 1.0;
  s.grad_scale = d.grad_scale;
  // The coefficient multiplies grads in their math type, as torch's _foreach_mul_.
  s.clip_coef = (double)(M)d.clip_coef;
  s.clip = d.clip;
  M step_size, bc2_sqrt;
  adam_bias_correction<M>(d.lr, h.beta1, h.beta2, step, step_size, bc2_sqrt);
  s.step_size = (double)step_size;
  s.bc2_sqrt = (double)bc2_sqrt;
  return s;
}

}  // namespace gradfast
