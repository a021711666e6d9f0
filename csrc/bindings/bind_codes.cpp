// The codes Python passes to the kernels, exported from the core that defines them, so the
// Python package never mirrors a number: dtype codes, norm kinds, weight-decay modes, and
// the element counts of a CPU chunk and of a CUDA Adam tile.
#include "../cuda/adam_cuda.h"
#include "../gradfast/adam_math.h"
#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"
#include "../gradfast/tensor_list.h"
#include "bindings.h"

namespace py = pybind11;

namespace gradfast::bindings {

void bind_codes(py::module_& m) {
  // Keys are torch's dtype names (getattr(torch, name)).
  py::dict dtypes;
  dtypes["float32"] = (int)DType::Float32;
  dtypes["float64"] = (int)DType::Float64;
  dtypes["float16"] = (int)DType::Float16;
  dtypes["bfloat16"] = (int)DType::BFloat16;
  m.attr("DTYPE_CODES") = dtypes;
  py::enum_<NormKind>(m, "NormKind", py::module_local())
      .value("L2", NormKind::L2)
      .value("L1", NormKind::L1)
      .value("Inf", NormKind::Inf)
      .value("NegInf", NormKind::NegInf)
      .value("L0", NormKind::L0)
      .value("Lp", NormKind::Lp);
  py::enum_<WeightDecayMode>(m, "WeightDecayMode", py::module_local())
      .value("None_", WeightDecayMode::None)
      .value("L2", WeightDecayMode::L2)
      .value("Decoupled", WeightDecayMode::Decoupled);
  m.attr("CHUNK_ELEMS") = kChunkElems;
  m.attr("ADAM_TILE_ELEMS") = cuda::kAdamTileElems;
}

}  // namespace gradfast::bindings
