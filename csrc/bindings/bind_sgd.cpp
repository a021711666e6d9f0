// Python entry points of the fused SGD step (CPU and CUDA). Pointers arrive as Python
// ints; the GIL is released while CPU kernels run. The scalars cross as the core's own
// structs, bound as Python classes: SgdHyper (the group's hyperparameters), SgdFlags (the
// switches that shape the kernel) and StepControl (bind_step.cpp: lr, GradScaler, clipping
// and skipping, shared by every optimizer).
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "../cpu/sgd_cpu.h"
#include "../cuda/sgd_cuda.h"
#include "bindings.h"
#include "host_lists.h"
#include "norm_first.h"

namespace py = pybind11;

namespace gradfast::bindings {
namespace {

void bind_sgd_structs(py::module_& m) {
  // module_local: cudasim loads a second copy of this module beside gradfast._C.
  py::class_<SgdHyper>(m, "SgdHyper", py::module_local())
      .def(py::init([](double momentum, double dampening, double weight_decay, double l1,
                       bool nesterov, bool maximize) {
             return SgdHyper{momentum, dampening, weight_decay, l1, nesterov, maximize};
           }),
           py::kw_only(), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
           py::arg("l1"), py::arg("nesterov"), py::arg("maximize"))
      .def_readwrite("momentum", &SgdHyper::momentum)
      .def_readwrite("dampening", &SgdHyper::dampening)
      .def_readwrite("weight_decay", &SgdHyper::weight_decay)
      .def_readwrite("l1", &SgdHyper::l1)
      .def_readwrite("nesterov", &SgdHyper::nesterov)
      .def_readwrite("maximize", &SgdHyper::maximize);
  py::class_<SgdFlags>(m, "SgdFlags", py::module_local())
      .def(py::init([](bool momentum, bool nesterov, bool wd, bool l1, bool unscale) {
             return SgdFlags{momentum, nesterov, wd, l1, unscale};
           }),
           py::kw_only(), py::arg("momentum"), py::arg("nesterov"), py::arg("wd"),
           py::arg("l1"), py::arg("unscale"))
      .def_readwrite("momentum", &SgdFlags::momentum)
      .def_readwrite("nesterov", &SgdFlags::nesterov)
      .def_readwrite("wd", &SgdFlags::wd)
      .def_readwrite("l1", &SgdFlags::l1)
      .def_readwrite("unscale", &SgdFlags::unscale);
}

}  // namespace

void bind_sgd(py::module_& m) {
  bind_sgd_structs(m);
  // momentum_buffers and first_flags: empty without momentum; a first flag of 0 means the
  // tensor has momentum history (sgd_cpu.h).
  m.def("cpu_sgd_step",
        [](const std::vector<intptr_t>& p, const std::vector<intptr_t>& g,
           const std::vector<intptr_t>& bufs, const std::vector<intptr_t>& first,
           const std::vector<int64_t>& numels, int dtype, const SgdHyper& hyper,
           const SgdFlags& flags, const StepControl& control, intptr_t skipped,
           int num_threads, int norm_kind, double norm_p) {
          const size_t n = p.size();
          if (g.size() != n || numels.size() != n || (!bufs.empty() && bufs.size() != n) ||
              (!first.empty() && first.size() != n))
            throw std::invalid_argument("cpu_sgd_step: lists differ in length");
          if (flags.momentum && (bufs.size() != n || first.size() != n))
            throw std::invalid_argument("cpu_sgd_step: momentum needs momentum_buffers and "
                                        "first_flags");
          auto pp = as_ptrs<void>(p), gp = as_ptrs<void>(g), bp = as_ptrs<void>(bufs);
          auto fp = as_ptrs<int32_t>(first);
          const cpu::SgdLists lists{pp.data(), gp.data(), flags.momentum ? bp.data() : nullptr,
                                    flags.momentum ? fp.data() : nullptr, numels.data(),
                                    (int64_t)n};
          py::gil_scoped_release nogil;
          norm_into_control(gp.data(), numels.data(), (int64_t)n, (DType)dtype, norm_kind,
                            norm_p, control, num_threads);
          cpu::sgd_step(lists, (DType)dtype, hyper, flags, control,
                        reinterpret_cast<int64_t*>(skipped), num_threads);
        },
        py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"),
        py::arg("first_flags"), py::arg("numels"), py::arg("dtype"), py::arg("hyper"),
        py::arg("flags"), py::arg("control"), py::arg("skipped"), py::arg("num_threads"),
        py::arg("norm_kind") = -1, py::arg("norm_p") = 2.0);
  m.attr("SGD_TILE_ELEMS") = cuda::kSgdTileElems;

#ifdef GRADFAST_WITH_CUDA
  m.def("cuda_sgd_workspace_bytes", [](int64_t n) { return cuda::sgd_workspace_bytes(n); });
  m.def("cuda_sgd_meta_layout", [] {
    return py::make_tuple(cuda::kSgdTileElems, cuda::kSgdMetaRows);
  });
  m.def("cuda_sgd_step",
        [](intptr_t meta, int64_t n, int64_t n_tiles, int dtype, const SgdHyper& hyper,
           const SgdFlags& flags, const StepControl& control, intptr_t skipped,
           intptr_t workspace, int device, intptr_t stream) {
          cuda::sgd_step({reinterpret_cast<const int64_t*>(meta), n, n_tiles}, (DType)dtype,
                         hyper, flags, control, reinterpret_cast<long long*>(skipped),
                         reinterpret_cast<void*>(workspace), device, stream);
        },
        py::arg("meta"), py::arg("n"), py::arg("n_tiles"), py::arg("dtype"), py::arg("hyper"),
        py::arg("flags"), py::arg("control"), py::arg("skipped"), py::arg("workspace"),
        py::arg("device"), py::arg("stream"));
#endif
}

}  // namespace gradfast::bindings
