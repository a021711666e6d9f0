// Python entry points of the fused Adam/AdamW step (CPU and CUDA).
#include "bindings.h"

namespace gradfast::bindings {

void bind_adam(pybind11::module_&) {}

}  // namespace gradfast::bindings
