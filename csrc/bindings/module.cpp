// gradfast._C: raw-pointer entry points into the torch-free native core. All validation
// and torch handling happens in the Python package; these functions trust their inputs.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "gradfast native core (torch-free): multi-tensor norms, clipping and Adam";
  gradfast::bindings::bind_info(m);
  gradfast::bindings::bind_codes(m);
  gradfast::bindings::bind_step(m);
  gradfast::bindings::bind_cpu(m);
  gradfast::bindings::bind_cuda(m);
  gradfast::bindings::bind_adam(m);
  gradfast::bindings::bind_health(m);
}
