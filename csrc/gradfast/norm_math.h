// Per-element math of vector norms, shared by the CPU loops and the CUDA kernels.
//
// A norm is computed in three steps, each written once here:
//   accumulate: fold |x| of every element into an accumulator (sum of squares for L2, ...)
//   combine:    merge two accumulators (chunk partials, thread lanes, CUDA warps)
//   finalize:   turn an accumulator into the norm (sqrt for L2, ^(1/p) for Lp)
// The global norm over many tensors is, as in torch, the norm of the vector of per-tensor
// norms: fold `accumulate` over the per-tensor norms, then `finalize`.
#pragma once
#include <cmath>
#include <cstdint>

#include "dtype.h"

namespace gradfast {

enum class NormKind : int { L2 = 0, L1 = 1, Inf = 2, NegInf = 3, L0 = 4, Lp = 5 };

// NaN-propagating max/min: torch's inf-norm of a tensor holding a NaN is NaN.
template <typename A> GF_HD A nan_max(A a, A b) { return (a > b || a != a) ? a : b; }
template <typename A> GF_HD A nan_min(A a, A b) { return (a < b || a != a) ? a : b; }

template <NormKind K, typename A>
struct NormOp {
  A p;  // the order, used by Lp only

  GF_HD static A identity() {
    return K == NormKind::NegInf ? (A)INFINITY : (A)0;
  }
  GF_HD A accumulate(A acc, A x) const {
    const A ax = x < (A)0 ? -x : x;
    if constexpr (K == NormKind::L2) return acc + x * x;
    if constexpr (K == NormKind::L1) return acc + ax;
    if constexpr (K == NormKind::Inf) return nan_max(acc, ax);
    if constexpr (K == NormKind::NegInf) return nan_min(acc, ax);
    if constexpr (K == NormKind::L0) return acc + (x != (A)0 ? (A)1 : (A)0);
    if constexpr (K == NormKind::Lp) return acc + (A)std::pow(ax, p);
    return acc;
  }
  GF_HD static A combine(A a, A b) {
    if constexpr (K == NormKind::Inf) return nan_max(a, b);
    if constexpr (K == NormKind::NegInf) return nan_min(a, b);
    return a + b;
  }
  GF_HD A finalize(A acc) const {
    if constexpr (K == NormKind::L2) return (A)std::sqrt(acc);
    if constexpr (K == NormKind::Lp) return (A)std::pow(acc, (A)1 / p);
    return acc;
  }
};

// Folds per-tensor norms into the total norm, exactly as torch.linalg.vector_norm of the
// stacked per-tensor norms, except for L0: torch 2.13 then counts the tensors that have any
// nonzero, gradfast counts the nonzero elements (the documented difference).
template <NormKind K, typename A>
GF_HD A fold_tensor_norms(const NormOp<K, A>& op, A acc, A tensor_norm) {
  if constexpr (K == NormKind::L0) return acc + tensor_norm;
  return op.accumulate(acc, tensor_norm);
}

// torch's clip coefficient, min(max_norm / (total + 1e-6), 1), with each intermediate
// rounded to the total's dtype T as torch's tensor ops materialise it. torch evaluates
// `max_norm / tensor` as `tensor.reciprocal() * max_norm` (Tensor.__rtruediv__), so the
// reciprocal is rounded on its own: a division would differ in the last bit, and for
// fp16 a reciprocal that overflows to inf makes torch's coefficient 1 (no clipping).
template <typename T>
GF_HD math_t<T> clip_coefficient(math_t<T> total, double max_norm) {
  using M = math_t<T>;
  const M denom = round_to<T>(total + (M)1e-6);
  const M recip = round_to<T>((M)1 / denom);
  const M coef = round_to<T>(recip * (M)max_norm);
  // torch.clamp(max=1.0) propagates NaN.
  return (coef > (M)1 ) ? (M)1 : coef;
}

#define GF_DISPATCH_NORM(KIND, ...)                                                   \
  switch (KIND) {                                                                     \
    case ::gradfast::NormKind::L2: { constexpr auto kNorm = ::gradfast::NormKind::L2; __VA_ARGS__; break; } \
    case ::gradfast::NormKind::L1: { constexpr auto kNorm = ::gradfast::NormKind::L1; __VA_ARGS__; break; } \
    case ::gradfast::NormKind::Inf: { constexpr auto kNorm = ::gradfast::NormKind::Inf; __VA_ARGS__; break; } \
    case ::gradfast::NormKind::NegInf: { constexpr auto kNorm = ::gradfast::NormKind::NegInf; __VA_ARGS__; break; } \
    case ::gradfast::NormKind::L0: { constexpr auto kNorm = ::gradfast::NormKind::L0; __VA_ARGS__; break; } \
    case ::gradfast::NormKind::Lp: { constexpr auto kNorm = ::gradfast::NormKind::Lp; __VA_ARGS__; break; } \
  }

}  // namespace gradfast
