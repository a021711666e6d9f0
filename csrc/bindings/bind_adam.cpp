// Python entry points of the fused Adam/AdamW step (CPU and CUDA). Pointers arrive as
// Python ints; the GIL is released while CPU kernels run. The scalars cross as the core's
// own structs, bound as Python classes: AdamHyper (the group's hyperparameters), AdamFlags
// (the switches that shape the kernel) and StepControl (bind_step.cpp: lr, GradScaler,
// clipping and skipping, shared by every optimizer).
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "../cpu/cpu_ops.h"
#include "../cuda/adam_cuda.h"
#include "bindings.h"
#include "host_lists.h"
#include "norm_first.h"

namespace py = pybind11;

namespace gradfast::bindings {
namespace {

void bind_adam_structs(py::module_& m) {
  py::class_<AdamHyper>(m, "AdamHyper", py::module_local())
      .def(py::init([](double beta1, double beta2, double eps, double weight_decay, double l1,
                       bool maximize) {
             return AdamHyper{beta1, beta2, eps, weight_decay, l1, maximize};
           }),
           py::kw_only(), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("l1"), py::arg("maximize"))
      .def_readwrite("beta1", &AdamHyper::beta1)
      .def_readwrite("beta2", &AdamHyper::beta2)
      .def_readwrite("eps", &AdamHyper::eps)
      .def_readwrite("weight_decay", &AdamHyper::weight_decay)
      .def_readwrite("l1", &AdamHyper::l1)
      .def_readwrite("maximize", &AdamHyper::maximize);
  py::class_<AdamFlags>(m, "AdamFlags", py::module_local())
      .def(py::init([](bool amsgrad, WeightDecayMode wd, bool l1, bool unscale) {
             return AdamFlags{amsgrad, wd, l1, unscale};
           }),
           py::kw_only(), py::arg("amsgrad"), py::arg("wd"), py::arg("l1"), py::arg("unscale"))
      .def_readwrite("amsgrad", &AdamFlags::amsgrad)
      .def_readwrite("wd", &AdamFlags::wd)
      .def_readwrite("l1", &AdamFlags::l1)
      .def_readwrite("unscale", &AdamFlags::unscale);
}

}  // namespace

void bind_adam(py::module_& m) {
  bind_adam_structs(m);
  m.def("cpu_adam_step",
        [](const std::vector<intptr_t>& p, const std::vector<intptr_t>& g,
           const std::vector<intptr_t>& ea, const std::vector<intptr_t>& eas,
           const std::vector<intptr_t>& vmax, const std::vector<intptr_t>& step,
           const std::vector<int64_t>& numels, int dtype, const AdamHyper& hyper,
           const AdamFlags& flags, const StepControl& control, intptr_t skipped,
           int num_threads, int norm_kind, double norm_p) {
          const size_t n = p.size();
          if (g.size() != n || ea.size() != n || eas.size() != n || step.size() != n ||
              numels.size() != n || (!vmax.empty() && vmax.size() != n))
            throw std::invalid_argument("cpu_adam_step: lists differ in length");
          if (flags.amsgrad && vmax.size() != n)
            throw std::invalid_argument("cpu_adam_step: amsgrad needs max_exp_avg_sqs");
          auto pp = as_ptrs<void>(p), gp = as_ptrs<void>(g), mp = as_ptrs<void>(ea),
               vp = as_ptrs<void>(eas), xp = as_ptrs<void>(vmax);
          auto sp = as_ptrs<float>(step);
          const cpu::AdamLists lists{pp.data(), gp.data(), mp.data(), vp.data(),
                                     flags.amsgrad ? xp.data() : nullptr, sp.data(),
                                     numels.data(), (int64_t)n};
          py::gil_scoped_release nogil;
          norm_into_control(gp.data(), numels.data(), (int64_t)n, (DType)dtype, norm_kind,
                            norm_p, control, num_threads);
          cpu::adam_step(lists, (DType)dtype, hyper, flags, control,
                         reinterpret_cast<int64_t*>(skipped), num_threads);
        },
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("steps"), py::arg("numels"), py::arg("dtype"),
        py::arg("hyper"), py::arg("flags"), py::arg("control"), py::arg("skipped"),
        py::arg("num_threads"), py::arg("norm_kind") = -1, py::arg("norm_p") = 2.0);

#ifdef GRADFAST_WITH_CUDA
  m.def("cuda_adam_workspace_bytes", [](int64_t n) { return cuda::adam_workspace_bytes(n); });
  m.def("cuda_adam_meta_layout", [] {
    return py::make_tuple(cuda::kAdamTileElems, cuda::kAdamMetaRows);
  });
  m.def("cuda_adam_step",
        [](intptr_t meta, int64_t n, int64_t n_tiles, int dtype, const AdamHyper& hyper,
           const AdamFlags& flags, const StepControl& control, intptr_t skipped, intptr_t workspace,
           int device, intptr_t stream) {
          cuda::adam_step({reinterpret_cast<const int64_t*>(meta), n, n_tiles}, (DType)dtype,
                          hyper, flags, control,
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
           intptr_t total, intptr_t coef, const AdamHyper& hyper, const AdamFlags& flags,
           const StepControl& control, intptr_t skipped, intptr_t adam_workspace,
           bool cooperative, int device, intptr_t stream) {
          return cuda::clip_adam_step(
              {reinterpret_cast<const int64_t*>(norm_meta), norm_n, n_chunks},
              {reinterpret_cast<const int64_t*>(meta), n, n_tiles}, (DType)dtype,
              (NormKind)kind, p, reinterpret_cast<void*>(norm_workspace),
              reinterpret_cast<void*>(total), reinterpret_cast<void*>(coef), hyper,
              flags, control, reinterpret_cast<long long*>(skipped),
              reinterpret_cast<void*>(adam_workspace), cooperative, device, stream);
        });
#endif
}

}  // namespace gradfast::bindings
