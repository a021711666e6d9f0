// StepControl (csrc/gradfast/step_control.h) as a Python class: the per-step inputs that
// every fused optimizer's kernels read (lr, GradScaler's scale and found_inf, the global
// norm and the clip threshold, skip_nonfinite). Built once per (param group, device) per
// step by gradfast._native; pointer fields are Python ints (0 = absent).
#include "../gradfast/step_control.h"
#include "bindings.h"
#include "struct_binding.h"

namespace py = pybind11;

namespace gradfast::bindings {

void bind_step(py::module_& m) {
  // module_local: cudasim loads a second copy of this module beside gradfast._C.
  py::class_<StepControl> c(m, "StepControl", py::module_local());
  c.def(py::init([](double lr, intptr_t lr_ptr, int lr_dtype, intptr_t grad_scale,
                    intptr_t found_inf, intptr_t total_norm, int total_dtype, bool clip,
                    double max_norm, intptr_t max_norm_ptr, int max_norm_dtype,
                    bool skip_nonfinite) {
          StepControl s;
          s.lr = lr;
          s.lr_ptr = as_const_ptr<void>(lr_ptr);
          s.lr_dtype = lr_dtype;
          s.grad_scale = as_const_ptr<float>(grad_scale);
          s.found_inf = as_const_ptr<float>(found_inf);
          s.total_norm = as_const_ptr<void>(total_norm);
          s.total_dtype = total_dtype;
          s.clip = clip;
          s.max_norm = max_norm;
          s.max_norm_ptr = as_const_ptr<void>(max_norm_ptr);
          s.max_norm_dtype = max_norm_dtype;
          s.skip_nonfinite = skip_nonfinite;
          return s;
        }),
        // Positional or keyword: gradfast._native.step.control() passes the fields
        // positionally, in this order, since a step builds one per (group, device) and
        // pybind's keyword matching costs more than the rest of the construction.
        py::arg("lr") = 0.0, py::arg("lr_ptr") = 0, py::arg("lr_dtype") = 0,
        py::arg("grad_scale") = 0, py::arg("found_inf") = 0, py::arg("total_norm") = 0,
        py::arg("total_dtype") = 0, py::arg("clip") = false, py::arg("max_norm") = 0.0,
        py::arg("max_norm_ptr") = 0, py::arg("max_norm_dtype") = 0,
        py::arg("skip_nonfinite") = false);
  c.def_readwrite("lr", &StepControl::lr)
      .def_readwrite("lr_dtype", &StepControl::lr_dtype)
      .def_readwrite("total_dtype", &StepControl::total_dtype)
      .def_readwrite("clip", &StepControl::clip)
      .def_readwrite("max_norm", &StepControl::max_norm)
      .def_readwrite("max_norm_dtype", &StepControl::max_norm_dtype)
      .def_readwrite("skip_nonfinite", &StepControl::skip_nonfinite);
  def_pointer<StepControl>(c, "lr_ptr", &StepControl::lr_ptr);
  def_pointer<StepControl>(c, "grad_scale", &StepControl::grad_scale);
  def_pointer<StepControl>(c, "found_inf", &StepControl::found_inf);
  def_pointer<StepControl>(c, "total_norm", &StepControl::total_norm);
  def_pointer<StepControl>(c, "max_norm_ptr", &StepControl::max_norm_ptr);
}

}  // namespace gradfast::bindings
