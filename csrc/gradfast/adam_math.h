// Per-element math of the fused Adam/AdamW step, shared by the CPU loops and the CUDA
// kernels (written once, compiled by the host compiler and by nvcc).
//
// It reproduces torch's fused CUDA kernel (aten/src/ATen/native/cuda/fused_adam_utils.cuh,
// FusedAdamMathFunctor, as in torch 2.11 .. 2.13) operation for operation:
//   - everything is computed in the math type M: fp32 for fp32/fp16/bf16 storage, fp64 for
//     fp64 (torch's opmath); lr, betas, eps and weight decay are first rounded to M;
//   - bias corrections from the step count rounded to M: bc1 = 1 - pow(beta1, step),
//     bc2_sqrt = sqrt(1 - pow(beta2, step)), step_size = lr / bc1 (all in M);
//   - the moments with torch's explicit FMAs: m = fma(b1, m, fma(-b1, g, g)),
//     v = fma(b2, v, fma(-b2, g*g, g*g));
//   - L2 decay g = fma(p, wd, g) and decoupled decay p = fma(-(lr*wd), p, p): the
//     contractions nvcc makes of torch's `grad += param * weight_decay` and
//     `param -= lr * weight_decay * param`, written out so that the host compiler gives
//     the same bits;
//   - denom = sqrt(v) / bc2_sqrt + eps and p -= step_size * m / denom.
// On CUDA the result is bitwise torch's. On the host pow is the C library's powf, which can
// differ from CUDA's in the last ulp of a bias correction. torch's fused CPU kernel
// computes the same update with other formulas (a lerp for exp_avg, a multiply for the
// decoupled decay), so against it results agree to a few ulps, not bitwise.
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
#include "macros.h"
#include "norm_math.h"
#include "step_control.h"

namespace gradfast {

enum class WeightDecayMode : int { None = 0, L2 = 1, Decoupled = 2 };

// Per-step scalars of one tensor, each already rounded to the math type M (and held in a
// double, which represents every M value exactly).
struct AdamScalars {
  double beta1, beta2, eps;
  double weight_decay;  // L2 coefficient (L2 mode)
  double lr_wd;         // M(lr) * M(weight_decay) in M (decoupled mode)
  double l1;            // l1_weight_decay
  double grad_scale;    // GradScaler's scale (unscale mode only)
  double clip_coef;     // clip coefficient (1 when not clipping)
  double step_size;     // lr / bc1
  double bc2_sqrt;      // sqrt(1 - beta2^step)
  bool clip;            // whether clip_coef applies (matters only with unscaling)
  bool maximize;
};

// Compile-time (CPU) or run-time (CUDA) switches of the element function.
struct AdamFlags {
  bool amsgrad;
  WeightDecayMode wd;
  bool l1;
  bool unscale;  // divide the grad by grad_scale and store the unscaled grad back
};

GF_HD float gf_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
GF_HD double gf_fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
GF_HD float gf_pow(float a, float b) {
#if defined(__CUDA_ARCH__)
  return powf(a, b);
#else
  return std::pow(a, b);
#endif
}
GF_HD double gf_pow(double a, double b) {
#if defined(__CUDA_ARCH__)
  return ::pow(a, b);
#else
  return std::pow(a, b);
#endif
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
  if (f.unscale) g = g / (M)s.grad_scale;
  // Clip and maximize in one multiplication by +-coef: rounding is symmetric, so this is
  // exactly clip-then-negate. Branch-free (a select), so that the CPU loops vectorise.
  const M sign = s.maximize ? (M)-1 : (M)1;
  const M clipped = round_to<T>(g * ((M)s.clip_coef * sign));
  const M gr0 = (!f.unscale || s.clip) ? clipped : g * sign;
  M gr = gr0;
  if (f.wd == WeightDecayMode::L2) gr = gf_fma(p, (M)s.weight_decay, gr);
  if (f.l1) gr = gr + (M)s.l1 * sign_of(p);  // l1 * sign(p) is exact
  if (f.wd == WeightDecayMode::Decoupled) p = gf_fma(-(M)s.lr_wd, p, p);
  const M b1 = (M)s.beta1, b2 = (M)s.beta2;
  m = gf_fma(b1, m, gf_fma(-b1, gr, gr));
  const M g2 = gr * gr;
  v = gf_fma(b2, v, gf_fma(-b2, g2, g2));
  M vv = v;
  if (f.amsgrad) {
    vmax = (vmax < v) ? v : vmax;  // std::max(vmax, v), as torch
    vv = vmax;
  }
  const M denom = std::sqrt(vv) / (M)s.bc2_sqrt + (M)s.eps;
  p = p - (M)s.step_size * m / denom;
}

// The group-wide hyperparameters of one launch.
struct AdamHyper {
  double beta1, beta2, eps, weight_decay, l1;
  bool maximize;
};

// Per-tensor scalars for a step count (already incremented) of a tensor of storage dtype T,
// computed in its math type as torch's kernel does.
template <typename T>
GF_HD AdamScalars adam_scalars(const AdamHyper& h, const StepDecision& d, float step) {
  using M = math_t<T>;
  AdamScalars s;
  const M lr = (M)d.lr, b1 = (M)h.beta1, b2 = (M)h.beta2, wd = (M)h.weight_decay;
  const M t = (M)step;
  const M bc1 = (M)1 - gf_pow(b1, t);
  const M bc2 = (M)1 - gf_pow(b2, t);
  s.beta1 = b1;
  s.beta2 = b2;
  s.eps = (M)h.eps;
  s.weight_decay = wd;
  s.lr_wd = (M)(lr * wd);
  s.l1 = (M)h.l1;
  s.grad_scale = (M)d.grad_scale;
  // The coefficient multiplies grads in their math type, as torch's _foreach_mul_.
  s.clip_coef = (M)d.clip_coef;
  s.clip = d.clip;
  s.maximize = h.maximize;
  s.step_size = (M)(lr / bc1);
  s.bc2_sqrt = (M)std::sqrt(bc2);
  return s;
}

}  // namespace gradfast
