// Per-unit math of adaptive gradient clipping (AGC, Brock et al. 2021), shared by the CPU
// loops and any GPU kernel.
//
// A unit is one output row of a weight (dim 0 of a tensor with ndim > 1, i.e. every
// element with the same first index) or a whole tensor (biases, 0-d and 1-d tensors). With
// pn and gn the norms of a unit of the parameter and of its gradient, the gradient becomes
//
//     mn = max(pn, eps) * clip_factor
//     g  = g                                  if gn < mn
//     g  = g * (mn / max(gn, 1e-6))           otherwise
//
// which is the plain-torch reference (timm.utils.adaptive_clip_grad's formula), with every
// intermediate rounded to the storage type T as torch materialises it, so results differ
// from torch only by the summation order inside the norms.
#pragma once
#include "dtype.h"

namespace gradfast {

template <typename T>
struct AgcUnit {
  math_t<T> factor;  // what the unit's gradient elements are multiplied by
  bool clipped;      // false: the unit is left exactly as it is
};

// pn, gn: the unit norms, already rounded to T (torch returns norms in the tensor dtype).
// NaN propagates as in torch: clamp keeps NaN, and NaN < mn is false, so the unit is scaled
// by a NaN factor.
template <typename T>
GF_HD AgcUnit<T> agc_unit(math_t<T> pn, math_t<T> gn, double clip_factor, double eps) {
  using M = math_t<T>;
  const M lo = (M)eps;
  const M clamped = round_to<T>(pn < lo ? lo : pn);
  const M max_norm = round_to<T>(clamped * (M)clip_factor);
  if (gn < max_norm) return {(M)1, false};
  const M tiny = (M)1e-6;
  const M denom = round_to<T>(gn < tiny ? tiny : gn);
  return {round_to<T>(max_norm / denom), true};
}

}  // namespace gradfast
