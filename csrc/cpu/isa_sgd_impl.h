// The fused SGD range kernel, compiled once per ISA (included by isa_kernels_impl.h inside
// its GF_ISA_NS namespace). The flags that change the shape of the loop, and whether the
// tensor takes its first momentum step, are template parameters, so each instantiation is a
// straight-line, vectorisable loop; the math is sgd_math.h's sgd_element, the same function
// the CUDA kernel runs.
#include <type_traits>

#include "../gradfast/sgd_math.h"
#include "sgd_range.h"

namespace gradfast::cpu::GF_ISA_NS {

template <typename T, bool kMomentum, bool kFirst, bool kNesterov, bool kWd, bool kL1,
          bool kUnscale>
void sgd_range_t(const SgdRange& r, const SgdScalars& s_in) {
  using M = math_t<T>;
  constexpr SgdFlags f{kMomentum, kNesterov, kWd, kL1, kUnscale};
  const SgdScalars s = s_in;  // a local copy: stores through the arrays cannot alias it
  T* __restrict__ p = static_cast<T*>(r.p);
  T* __restrict__ g = static_cast<T*>(r.g);
  T* __restrict__ buf = static_cast<T*>(r.buf);
  const int64_t n = r.n;
  for (int64_t i = 0; i < n; ++i) {
    M pi = load_as_float(p[i]);
    M gi = load_as_float(g[i]);
    // The first step never reads the buffer (its memory holds no history yet).
    M bi = (kMomentum && !kFirst) ? load_as_float(buf[i]) : (M)0;
    sgd_element<T>(f, s, kFirst, pi, gi, bi);
    p[i] = StoreAs<T>::from(pi);
    if (kMomentum) buf[i] = StoreAs<T>::from(bi);
    if (kUnscale) g[i] = StoreAs<T>::from(gi);
  }
}

template <typename T>
void sgd_range_flags(const SgdRange& r, const SgdFlags& f, const SgdScalars& s, bool first) {
  using TF = std::true_type;
  using FF = std::false_type;
  auto with_un = [&](auto mom, auto fst, auto nes, auto wd, auto l1) {
    constexpr bool A = decltype(mom)::value, B = decltype(fst)::value,
                   C = decltype(nes)::value, D = decltype(wd)::value,
                   E = decltype(l1)::value;
    if (f.unscale) sgd_range_t<T, A, B, C, D, E, true>(r, s);
    else sgd_range_t<T, A, B, C, D, E, false>(r, s);
  };
  auto with_l1 = [&](auto mom, auto fst, auto nes, auto wd) {
    if (f.l1) with_un(mom, fst, nes, wd, TF{}); else with_un(mom, fst, nes, wd, FF{});
  };
  auto with_wd = [&](auto mom, auto fst, auto nes) {
    if (f.wd) with_l1(mom, fst, nes, TF{}); else with_l1(mom, fst, nes, FF{});
  };
  // Without momentum there is no first step and no nesterov: one shape, not four.
  if (!f.momentum) with_wd(FF{}, FF{}, FF{});
  else if (first) {
    if (f.nesterov) with_wd(TF{}, TF{}, TF{}); else with_wd(TF{}, TF{}, FF{});
  } else {
    if (f.nesterov) with_wd(TF{}, FF{}, TF{}); else with_wd(TF{}, FF{}, FF{});
  }
}

void sgd_range(const SgdRange& r, DType dt, const SgdFlags& f, const SgdScalars& s,
               bool first) {
  GF_DISPATCH_DTYPE(dt, sgd_range_flags<scalar_t>(r, f, s, first));
}

}  // namespace gradfast::cpu::GF_ISA_NS
