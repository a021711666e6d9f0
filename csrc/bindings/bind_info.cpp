// Build and run-time facts for gradfast.show_config().
#include "../cpu/cpu_kernels.h"
#include "../cpu/thread_pool.h"
#include "../cuda/cuda_ops.h"
#include "../gradfast/tensor_list.h"
#include "bindings.h"

#ifndef GRADFAST_VERSION
#define GRADFAST_VERSION "0.0.0"
#endif

namespace gradfast::bindings {

void bind_info(pybind11::module_& m) {
  m.attr("__version__") = GRADFAST_VERSION;
#ifdef GRADFAST_WITH_CUDA
  m.attr("CUDA_COMPILED") = true;
  m.def("cuda_archs", [] { return cuda::compiled_archs(); });
  m.def("cuda_device_count", [] { return cuda::device_count(); });
#else
  m.attr("CUDA_COMPILED") = false;
  m.def("cuda_archs", [] { return std::string(); });
  m.def("cuda_device_count", [] { return 0; });
#endif
  m.def("cpu_isa", [] { return std::string(cpu::best_kernels().isa); });
  m.def("cpu_backend", [] { return cpu::parallel_backend(); },
        "The CPU kernels' threads: 'openmp' (the process's OpenMP team, torch's) or 'pool'.");
  m.def("set_cpu_backend", &cpu::set_parallel_backend, pybind11::arg("name"),
        "Selects 'auto', 'openmp' or 'pool'; returns the back end now in use.");
}

}  // namespace gradfast::bindings
