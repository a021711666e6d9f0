// Python entry points of the gradient-health kernels (adaptive gradient clipping).
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "../cpu/agc.h"
#include "../cuda/agc_table.h"
#include "bindings.h"

namespace py = pybind11;

namespace gradfast::bindings {

void bind_health(py::module_& m) {
  m.def("cpu_agc",
        [](const std::vector<intptr_t>& params, const std::vector<intptr_t>& grads,
           const std::vector<int64_t>& numels, const std::vector<int64_t>& unit_sizes,
           int dtype, int kind, double p, double clip_factor, double eps, intptr_t clipped,
           int num_threads) {
          const size_t n = numels.size();
          if (params.size() != n || grads.size() != n || unit_sizes.size() != n)
            throw std::invalid_argument("params, grads, numels and unit_sizes differ in length");
          std::vector<void*> pp(n), gp(n);
          for (size_t i = 0; i < n; ++i) {
            pp[i] = reinterpret_cast<void*>(params[i]);
            gp[i] = reinterpret_cast<void*>(grads[i]);
          }
          py::gil_scoped_release nogil;
          cpu::agc(pp.data(), gp.data(), numels.data(), unit_sizes.data(), (int64_t)n,
                   (DType)dtype, (NormKind)kind, p, clip_factor, eps,
                   reinterpret_cast<int64_t*>(clipped), num_threads);
        },
        py::arg("params"), py::arg("grads"), py::arg("numels"), py::arg("unit_sizes"),
        py::arg("dtype"), py::arg("kind"), py::arg("p"), py::arg("clip_factor"), py::arg("eps"),
        py::arg("clipped"), py::arg("num_threads"));
  // The device table of a CUDA AGC group (csrc/cuda/agc_table.h), built on the host: plain
  // C++, so it exists (and is tested) in CPU-only builds too.
  m.def("agc_cuda_table",
        [](const std::vector<int64_t>& params, const std::vector<int64_t>& grads,
           const std::vector<int64_t>& numels, const std::vector<int64_t>& unit_sizes) {
          cuda::AgcTableHost h = cuda::agc_build_table(params, grads, numels, unit_sizes);
          return py::make_tuple(std::move(h.meta), h.n_items, h.n_big_units, h.n_big_items);
        },
        py::arg("params"), py::arg("grads"), py::arg("numels"), py::arg("unit_sizes"),
        "(table, n_items, n_big_units, n_big_items) of one CUDA AGC group");
  m.def("agc_cuda_shape",
        [](int64_t unit) {
          if (unit < 1) throw std::invalid_argument("unit size must be positive");
          const cuda::AgcShape s = cuda::agc_shape(unit);
          return py::make_tuple(s.group, s.units_per_item, s.slices);
        },
        py::arg("unit"), "(lanes per unit or 0, units per item, slices per unit)");
  m.attr("AGC_SLICE_ELEMS") = cuda::kAgcSliceElems;
  m.attr("AGC_GROUP_MAX_UNIT") = cuda::kAgcGroupMaxUnit;
}

}  // namespace gradfast::bindings
