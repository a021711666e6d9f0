// The fused Adam range kernel, compiled once per ISA (included by isa_kernels_impl.h inside
// its GF_ISA_NS namespace). The flags that change the shape of the loop are template
// parameters, so each instantiation is a straight-line, vectorisable loop; the math is
// adam_math.h's adam_element, the same function the CUDA kernel runs.
#include <type_traits>

#include "../gradfast/adam_math.h"

namespace gradfast::cpu::GF_ISA_NS {

template <typename T, bool kAmsgrad, int kWd, bool kL1, bool kUnscale>
void adam_range_t(const AdamRange& r, const AdamScalars& s_in) {
  using M = math_t<T>;
  constexpr AdamFlags f{kAmsgrad, (WeightDecayMode)kWd, kL1, kUnscale};
  const AdamScalars s = s_in;  // a local copy: stores through the arrays cannot alias it
  T* __restrict__ p = static_cast<T*>(r.p);
  T* __restrict__ g = static_cast<T*>(r.g);
  T* __restrict__ m = static_cast<T*>(r.m);
  T* __restrict__ v = static_cast<T*>(r.v);
  T* __restrict__ vmax = static_cast<T*>(r.vmax);
  const int64_t n = r.n;
  for (int64_t i = 0; i < n; ++i) {
    M pi = load_as_float(p[i]);
    M gi = load_as_float(g[i]);
    M mi = load_as_float(m[i]);
    M vi = load_as_float(v[i]);
    M vmi = kAmsgrad ? load_as_float(vmax[i]) : (M)0;
    adam_element<T>(f, s, pi, gi, mi, vi, vmi);
    p[i] = StoreAs<T>::from(pi);
    m[i] = StoreAs<T>::from(mi);
    v[i] = StoreAs<T>::from(vi);
    if (kAmsgrad) vmax[i] = StoreAs<T>::from(vmi);
    if (kUnscale) g[i] = StoreAs<T>::from(gi);
  }
}

template <typename T>
void adam_range_flags(const AdamRange& r, const AdamFlags& f, const AdamScalars& s) {
  using TF = std::true_type;
  using FF = std::false_type;
  auto with_wd = [&](auto ams, auto l1, auto un) {
    constexpr bool A = decltype(ams)::value, L = decltype(l1)::value, U = decltype(un)::value;
    switch (f.wd) {
      case WeightDecayMode::None: adam_range_t<T, A, 0, L, U>(r, s); break;
      case WeightDecayMode::L2: adam_range_t<T, A, 1, L, U>(r, s); break;
      case WeightDecayMode::Decoupled: adam_range_t<T, A, 2, L, U>(r, s); break;
    }
  };
  auto with_un = [&](auto ams, auto l1) {
    if (f.unscale) with_wd(ams, l1, TF{}); else with_wd(ams, l1, FF{});
  };
  auto with_l1 = [&](auto ams) {
    if (f.l1) with_un(ams, TF{}); else with_un(ams, FF{});
  };
  if (f.amsgrad) with_l1(TF{}); else with_l1(FF{});
}

void adam_range(const AdamRange& r, DType dt, const AdamFlags& f, const AdamScalars& s) {
  GF_DISPATCH_DTYPE(dt, adam_range_flags<scalar_t>(r, f, s));
}

}  // namespace gradfast::cpu::GF_ISA_NS
