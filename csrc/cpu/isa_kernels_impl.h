// Range kernels compiled once per ISA. Included by isa_generic.cpp, isa_avx2.cpp and
// isa_avx512.cpp, each defining GF_ISA_NS and GF_ISA_NAME and built with its own -m flags.
// Loops are written so the compiler vectorises them: a fixed array of independent
// accumulator lanes (no -ffast-math, so the summation order is the one written here).
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"
#include "cpu_kernels.h"
#include "isa_adam_impl.h"
#include "isa_sgd_impl.h"

namespace gradfast::cpu::GF_ISA_NS {

template <NormKind K, typename T>
double norm_range_t(const T* x, int64_t n, double p) {
  using A = math_t<T>;
  constexpr int L = sizeof(A) == 4 ? 32 : 16;  // lanes: several vectors in flight
  const NormOp<K, A> op{(A)p};
  A acc[L];
  for (int j = 0; j < L; ++j) acc[j] = op.identity();
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int j = 0; j < L; ++j) acc[j] = op.accumulate(acc[j], load_as_float(x[i + j]));
  }
  for (int j = 0; i + j < n; ++j) acc[j] = op.accumulate(acc[j], load_as_float(x[i + j]));
  for (int width = L / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] = op.combine(acc[j], acc[j + width]);
  }
  return (double)acc[0];
}

double norm_range(const void* x, int64_t n, DType dt, NormKind kind, double p) {
  double r = 0;
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind,
      r = norm_range_t<kNorm>(static_cast<const scalar_t*>(x), n, p)));
  return r;
}

template <typename T>
void scale_range_t(T* x, int64_t n, math_t<T> coef) {
  for (int64_t i = 0; i < n; ++i) x[i] = StoreAs<T>::from(load_as_float(x[i]) * coef);
}

void scale_range(void* x, int64_t n, DType dt, double coef) {
  GF_DISPATCH_DTYPE(dt, scale_range_t(static_cast<scalar_t*>(x), n, (math_t<scalar_t>)coef));
}

template <typename T>
void clamp_range_t(T* x, int64_t n, math_t<T> lo, math_t<T> hi) {
  for (int64_t i = 0; i < n; ++i) {
    // torch clamps with clamp_min(lo) and then clamp_max(hi): when lo > hi (a negative
    // clip value) every value ends up hi. NaN fails both comparisons and is kept.
    math_t<T> v = load_as_float(x[i]);
    v = v < lo ? lo : v;
    x[i] = StoreAs<T>::from(v > hi ? hi : v);
  }
}

void clamp_range(void* x, int64_t n, DType dt, double lo, double hi) {
  GF_DISPATCH_DTYPE(dt, clamp_range_t(static_cast<scalar_t*>(x), n, (math_t<scalar_t>)lo,
                                      (math_t<scalar_t>)hi));
}

const CpuKernels& table() {
  static const CpuKernels k{GF_ISA_NAME, &norm_range, &scale_range, &clamp_range, &adam_range,
                              &sgd_range};
  return k;
}

}  // namespace gradfast::cpu::GF_ISA_NS
