// Python entry points of the fused Adam/AdamW step (CPU and CUDA). Pointers arrive as
// Python ints; the GIL is released while CPU kernels run. The scalar arguments are grouped
// as in adam_math.h:
//   hyper   = (beta1, beta2, eps, weight_decay, l1_weight_decay, maximize)
//   flags   = (amsgrad, weight_decay_mode, has_l1, unscale)
//   control = (lr, lr_ptr, lr_dtype, grad_scale_ptr, found_inf_ptr, total_norm_ptr,
//              total_dtype, clip, max_norm, skip_nonfinite, max_norm_ptr, max_norm_dtype)
// A pointer of 0 means "absent".
#include <pybind11/stl.h>

#include <stdexcept>
#include <tuple>
#include <vector>

#include "../cpu/cpu_ops.h"
#include "../cuda/adam_cuda.h"
#include "bindings.h"

namespace py = pybind11;

namespace gradfast::bindings {
namespace {

using Hyper = std::tuple<double, double, double, double, double, bool>;
using Flags = std::tuple<bool, int, bool, bool>;
using Control = std::tuple<double, intptr_t, int, intptr_t, intptr_t, intptr_t, int, bool, double,
                           bool, intptr_t, int>;

AdamHyper to_hyper(const Hyper& h) {
  return {std::get<0>(h), std::get<1>(h), std::get<2>(h), std::get<3>(h), std::get<4>(h),
          std::get<5>(h)};
}

AdamFlags to_flags(const Flags& f) {
  return {std::get<0>(f), (WeightDecayMode)std::get<1>(f), std::get<2>(f), std::get<3>(f)};
}

template <typename P>
const P* cptr(intptr_t v) { return reinterpret_cast<const P*>(v); }

AdamControl to_control(const Control& c) {
  AdamControl k;
  k.lr = std::get<0>(c);
  k.lr_ptr = cptr<void>(std::get<1>(c));
  k.lr_dtype = std::get<2>(c);
  k.grad_scale = cptr<float>(std::get<3>(c));
  k.found_inf = cptr<float>(std::get<4>(c));
  k.total_norm = cptr<void>(std::get<5>(c));
  k.total_dtype = std::get<6>(c);
  k.clip = std::get<7>(c);
  k.max_norm = std::get<8>(c);
  k.skip_nonfinite = std::get<9>(c);
  k.max_norm_ptr = cptr<void>(std::get<10>(c));
  k.max_norm_dtype = std::get<11>(c);
  return k;
}

std::vector<void*> as_ptrs(const std::vector<intptr_t>& v) {
  std::vector<void*> out;
  out.reserve(v.size());
  for (intptr_t x : v) out.push_back(reinterpret_cast<void*>(x));
  return out;
}

}  // namespace

void bind_adam(py::module_& m) {
  m.def("cpu_adam_step",
        [](const std::vector<intptr_t>& p, const std::vector<intptr_t>& g,
           const std::vector<intptr_t>& ea, const std::vector<intptr_t>& eas,
           const std::vector<intptr_t>& vmax, const std::vector<intptr_t>& step,
           const std::vector<int64_t>& numels, int dtype, const Hyper& hyper,
           const Flags& flags, const Control& control, intptr_t skipped, int num_threads) {
          const size_t n = p.size();
          if (g.size() != n || ea.size() != n || eas.size() != n || step.size() != n ||
              numels.size() != n || (!vmax.empty() && vmax.size() != n))
            throw std::invalid_argument("cpu_adam_step: lists differ in length");
          const AdamFlags f = to_flags(flags);
          if (f.amsgrad && vmax.size() != n)
            throw std::invalid_argument("cpu_adam_step: amsgrad needs max_exp_avg_sqs");
          auto pp = as_ptrs(p), gp = as_ptrs(g), mp = as_ptrs(ea), vp = as_ptrs(eas),
               xp = as_ptrs(vmax);
          std::vector<float*> sp;
          sp.reserve(n);
          for (intptr_t s : step) sp.push_back(reinterpret_cast<float*>(s));
          const cpu::AdamLists lists{pp.data(), gp.data(), mp.data(), vp.data(),
                                     f.amsgrad ? xp.data() : nullptr, sp.data(),
                                     numels.data(), (int64_t)n};
          const AdamHyper h = to_hyper(hyper);
          const AdamControl c = to_control(control);
          py::gil_scoped_release nogil;
          cpu::adam_step(lists, (DType)dtype, h, f, c, reinterpret_cast<int64_t*>(skipped),
                         num_threads);
        },
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("steps"), py::arg("numels"), py::arg("dtype"),
        py::arg("hyper"), py::arg("flags"), py::arg("control"), py::arg("skipped"),
        py::arg("num_threads"));

#ifdef GRADFAST_WITH_CUDA
  m.def("cuda_adam_workspace_bytes", [](int64_t n) { return cuda::adam_workspace_bytes(n); });
  m.def("cuda_adam_meta_layout", [] {
    return py::make_tuple(cuda::kAdamTileElems, cuda::kAdamMetaRows);
  });
  m.def("cuda_adam_step",
        [](intptr_t meta, int64_t n, int64_t n_tiles, int dtype, const Hyper& hyper,
           const Flags& flags, const Control& control, intptr_t skipped, intptr_t workspace,
           int device, intptr_t stream) {
          cuda::adam_step({reinterpret_cast<const int64_t*>(meta), n, n_tiles}, (DType)dtype,
                          to_hyper(hyper), to_flags(flags), to_control(control),
                          reinterpret_cast<long long*>(skipped),
                          reinterpret_cast<void*>(workspace), device, stream);
        });
  // The opt-in one-launch clip + Adam step (adam_cuda.h clip_adam_step): the grads' norm
  // table (device_list) and the Adam table, the norm order, both workspaces, the total
  // (grad dtype) and optional clip coefficient outputs. control's total pointer and dtype
  // are ignored. Returns the launches that ran: 1, or 2 when it fell back.
  m.def("cuda_clip_adam_step",
        [](intptr_t norm_meta, int64_t norm_n, int64_t n_chunks, intptr_t meta, int64_t n,
           int64_t n_tiles, int dtype, int kind, double p, intptr_t norm_workspace,
           intptr_t total, intptr_t coef, const Hyper& hyper, const Flags& flags,
           const Control& control, intptr_t skipped, intptr_t adam_workspace,
           bool cooperative, int device, intptr_t stream) {
          return cuda::clip_adam_step(
              {reinterpret_cast<const int64_t*>(norm_meta), norm_n, n_chunks},
              {reinterpret_cast<const int64_t*>(meta), n, n_tiles}, (DType)dtype,
              (NormKind)kind, p, reinterpret_cast<void*>(norm_workspace),
              reinterpret_cast<void*>(total), reinterpret_cast<void*>(coef), to_hyper(hyper),
              to_flags(flags), to_control(control), reinterpret_cast<long long*>(skipped),
              reinterpret_cast<void*>(adam_workspace), cooperative, device, stream);
        });
#endif
}

}  // namespace gradfast::bindings
