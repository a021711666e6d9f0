// Python entry points of the CPU back end. Pointers arrive as Python ints; the GIL is
// released while kernels run.
#include <pybind11/stl.h>

#include <vector>

#include "../cpu/cpu_ops.h"
#include "bindings.h"

namespace py = pybind11;

namespace gradfast::bindings {
namespace {

struct HostList {
  std::vector<void*> ptrs;
  std::vector<int64_t> numels;
  HostList(const std::vector<intptr_t>& p, std::vector<int64_t> n) : numels(std::move(n)) {
    if (p.size() != numels.size()) throw std::invalid_argument("ptrs and numels differ in length");
    ptrs.reserve(p.size());
    for (intptr_t v : p) ptrs.push_back(reinterpret_cast<void*>(v));
  }
  TensorList view() const { return {ptrs.data(), numels.data(), (int64_t)ptrs.size()}; }
};

void* as_ptr(intptr_t v) { return reinterpret_cast<void*>(v); }

}  // namespace

void bind_cpu(py::module_& m) {
  m.def("cpu_multi_norm",
        [](const std::vector<intptr_t>& ptrs, std::vector<int64_t> numels, int dtype, int kind,
           double p, intptr_t per_tensor, intptr_t total, intptr_t coef, double max_norm,
           int num_threads) {
          HostList l(ptrs, std::move(numels));
          py::gil_scoped_release nogil;
          cpu::multi_norm(l.view(), (DType)dtype, (NormKind)kind, p, as_ptr(per_tensor),
                          as_ptr(total), as_ptr(coef), max_norm, num_threads);
        },
        py::arg("ptrs"), py::arg("numels"), py::arg("dtype"), py::arg("kind"), py::arg("p"),
        py::arg("per_tensor"), py::arg("total"), py::arg("coef"), py::arg("max_norm"),
        py::arg("num_threads"));
  m.def("cpu_multi_scale",
        [](const std::vector<intptr_t>& ptrs, std::vector<int64_t> numels, int dtype,
           intptr_t coef, int num_threads) {
          HostList l(ptrs, std::move(numels));
          py::gil_scoped_release nogil;
          cpu::multi_scale(l.view(), (DType)dtype, as_ptr(coef), num_threads);
        },
        py::arg("ptrs"), py::arg("numels"), py::arg("dtype"), py::arg("coef"),
        py::arg("num_threads"));
  m.def("cpu_multi_clamp",
        [](const std::vector<intptr_t>& ptrs, std::vector<int64_t> numels, int dtype, double lo,
           double hi, int num_threads) {
          HostList l(ptrs, std::move(numels));
          py::gil_scoped_release nogil;
          cpu::multi_clamp(l.view(), (DType)dtype, lo, hi, num_threads);
        },
        py::arg("ptrs"), py::arg("numels"), py::arg("dtype"), py::arg("lo"), py::arg("hi"),
        py::arg("num_threads"));
}

}  // namespace gradfast::bindings
