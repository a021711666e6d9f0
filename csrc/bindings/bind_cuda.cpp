// Python entry points of the CUDA back end (absent when built without CUDA).
#include "../cuda/cuda_ops.h"
#include "bindings.h"

namespace py = pybind11;

namespace gradfast::bindings {

#ifdef GRADFAST_WITH_CUDA
namespace {
void* as_ptr(intptr_t v) { return reinterpret_cast<void*>(v); }
cuda::DeviceList as_list(intptr_t meta, int64_t n, int64_t n_chunks) {
  return {reinterpret_cast<const int64_t*>(meta), n, n_chunks};
}
}  // namespace

void bind_cuda(py::module_& m) {
  m.def("cuda_norm_workspace_bytes",
        [](int64_t n, int64_t n_chunks, int dtype) {
          return cuda::norm_workspace_bytes(n, n_chunks, (DType)dtype);
        });
  m.def("cuda_multi_norm",
        [](intptr_t meta, int64_t n, int64_t n_chunks, int dtype, int kind, double p,
           intptr_t workspace, intptr_t per_tensor, intptr_t total, intptr_t coef,
           double max_norm, int device, intptr_t stream) {
          cuda::multi_norm(as_list(meta, n, n_chunks), (DType)dtype, (NormKind)kind, p,
                           as_ptr(workspace), as_ptr(per_tensor), as_ptr(total), as_ptr(coef),
                           max_norm, device, stream);
        });
  m.def("cuda_multi_scale",
        [](intptr_t meta, int64_t n, int64_t n_chunks, int dtype, intptr_t coef, int device,
           intptr_t stream) {
          cuda::multi_scale(as_list(meta, n, n_chunks), (DType)dtype, as_ptr(coef), device,
                            stream);
        });
  m.def("cuda_multi_clamp",
        [](intptr_t meta, int64_t n, int64_t n_chunks, int dtype, double lo, double hi,
           int device, intptr_t stream) {
          cuda::multi_clamp(as_list(meta, n, n_chunks), (DType)dtype, lo, hi, device, stream);
        });
  m.def("cuda_agc_workspace_bytes",
        [](int64_t n_big_units, int64_t n_big_items, int dtype) {
          return cuda::agc_workspace_bytes(n_big_units, n_big_items, (DType)dtype);
        });
  m.def("cuda_agc",
        [](intptr_t meta, int64_t n, int64_t n_items, int64_t n_big_units, int64_t n_big_items,
           int dtype, int kind, double p, double clip_factor, double eps, intptr_t workspace,
           intptr_t clipped, int device, intptr_t stream) {
          const cuda::AgcDeviceTable table{reinterpret_cast<const int64_t*>(meta), n, n_items,
                                           n_big_units, n_big_items};
          cuda::agc(table, (DType)dtype, (NormKind)kind, p, clip_factor, eps, as_ptr(workspace),
                    as_ptr(clipped), device, stream);
        });
}
#else
void bind_cuda(py::module_&) {}
#endif

}  // namespace gradfast::bindings
