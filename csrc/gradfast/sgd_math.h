// Per-element math of the fused SGD step, shared by the CPU loops and the CUDA kernels
// (written once, compiled by the host compiler and by nvcc).
//
// It reproduces torch's for-loop SGD (torch/optim/sgd.py _single_tensor_sgd, torch 2.13)
// operation for operation, in the math type M (fp32 for fp32/fp16/bf16 storage, fp64 for
// fp64; every hyperparameter first rounded to M, as torch's CPU kernels round a Python
// scalar to the op's math type):
//   d = -grad with maximize, else grad
//   d = fma(p, weight_decay, d)                     grad.add(param, alpha=weight_decay)
//   first step:  buf = d                            grad.detach().clone()
//   later steps: buf = fma(d, 1 - dampening, round(buf * momentum))
//                                                   buf.mul_(momentum).add_(grad, alpha=1-dampening)
//   nesterov:    d = fma(buf, momentum, d)          grad.add(buf, alpha=momentum)
//   else         d = buf
//   p = fma(d, -lr, p)                              param.add_(grad, alpha=-lr)
// The FMAs are the ones torch's vectorised CPU add (ufunc add: vec::fmadd(other, alpha,
// self)) and nvcc's contraction compute, written out so that every back end gives the same
// bits. buf is rounded to its storage dtype before the nesterov/plain update reads it (torch
// reads the stored buffer); the other intermediates stay in M, as in torch's fused kernels
// (torch's for-loop rounds them to the parameter dtype, which matters for fp16/bf16 only).
//
// torch's fused CPU kernel (aten/src/ATen/native/cpu/FusedSGDKernel.cpp) computes the same
// update with separate multiplies and adds (no FMA) and its fused CUDA kernel
// (fused_sgd_kernel.cu) with double-precision intermediates, so against those results agree
// to an ulp or so, not bitwise.
//
// gradfast's additions, in this order within one element (the order of adam_math.h):
//   g = grad / grad_scale              (GradScaler; the unscaled grad is what is stored back)
//   g = round_to_storage(g * clip)     (max_grad_norm: torch's clip_grad_norm_ writes the
//                                       clipped grad in the grad's dtype before its step)
//   d = -g                             (maximize)
//   d = d + weight_decay * p           (L2, torch's SGD weight decay)
//   d = d + l1_weight_decay * sign(p)  (L1, coupled: it enters the momentum buffer)
//   momentum, nesterov, update         (torch's SGD)
#pragma once
#include <cstdint>

#include "adam_math.h"  // gf_fma, sign_of
#include "dtype.h"
#include "macros.h"
#include "step_control.h"

namespace gradfast {

// The group-wide hyperparameters of one launch, as torch's SGD takes them.
struct SgdHyper {
  double momentum, dampening, weight_decay, l1;
  bool nesterov, maximize;
};

// Compile-time (CPU) or run-time (CUDA) switches of the element function.
struct SgdFlags {
  bool momentum;  // momentum != 0: there is a momentum buffer
  bool nesterov;
  bool wd;        // weight_decay != 0
  bool l1;        // l1_weight_decay != 0
  bool unscale;   // divide the grad by grad_scale and store the unscaled grad back
};

// Per-step scalars of a launch, each already rounded to the math type M (and held in a
// double, which represents every M value exactly).
struct SgdScalars {
  double momentum, one_minus_dampening, weight_decay, l1;
  double neg_lr;      // -M(lr)
  double grad_scale;  // GradScaler's scale (unscale mode only)
  double clip_coef;   // clip coefficient (1 when not clipping)
  bool clip;          // whether clip_coef applies (matters only with unscaling)
  bool maximize;
};

template <typename T>
GF_HD SgdScalars sgd_scalars(const SgdHyper& h, const StepDecision& d) {
  using M = math_t<T>;
  SgdScalars s;
  s.momentum = (M)h.momentum;
  s.one_minus_dampening = (M)(1.0 - h.dampening);  // Python's 1 - dampening, then to M
  s.weight_decay = (M)h.weight_decay;
  s.l1 = (M)h.l1;
  s.neg_lr = -(M)d.lr;
  s.grad_scale = (M)d.grad_scale;
  s.clip_coef = (M)d.clip_coef;
  s.clip = d.clip;
  s.maximize = h.maximize;
  return s;
}

// One element of the step, on values already loaded into the math type. `first`: the
// tensor has no momentum history yet (torch's `buf is None`). On return p and buf hold the
// new values to store (buf already rounded to storage); g holds the unscaled gradient (to
// store back in unscale mode). T is the storage type.
template <typename T>
GF_HD void sgd_element(const SgdFlags& f, const SgdScalars& s, bool first, math_t<T>& p,
                       math_t<T>& g, math_t<T>& buf) {
  using M = math_t<T>;
  if (f.unscale) g = g / (M)s.grad_scale;
  // Clip and maximize in one multiplication by +-coef, exactly clip-then-negate (rounding
  // is symmetric), branch-free so the CPU loops vectorise: as adam_element.
  const M sign = s.maximize ? (M)-1 : (M)1;
  const M clipped = round_to<T>(g * ((M)s.clip_coef * sign));
  M d = (!f.unscale || s.clip) ? clipped : g * sign;
  if (f.wd) d = gf_fma(p, (M)s.weight_decay, d);
  if (f.l1) d = d + (M)s.l1 * sign_of(p);  // l1 * sign(p) is exact
  if (f.momentum) {
    const M decayed = round_to<T>(buf * (M)s.momentum);
    const M b = round_to<T>(first ? d : gf_fma(d, (M)s.one_minus_dampening, decayed));
    buf = b;
    d = f.nesterov ? gf_fma(b, (M)s.momentum, d) : b;
  }
  p = gf_fma(d, (M)s.neg_lr, p);
}

}  // namespace gradfast
