// Each concept registers its own Python entry points on the module.
#pragma once
#include <pybind11/pybind11.h>

namespace gradfast::bindings {

void bind_info(pybind11::module_& m);
void bind_codes(pybind11::module_& m);
void bind_step(pybind11::module_& m);
void bind_cpu(pybind11::module_& m);
void bind_cuda(pybind11::module_& m);
void bind_adam(pybind11::module_& m);
void bind_health(pybind11::module_& m);

}  // namespace gradfast::bindings
