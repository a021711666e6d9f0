// The generic build of the CPU range kernels (flags set in CMakeLists.txt).
#define GF_ISA_NS isa_generic
#define GF_ISA_NAME "generic"
#include "isa_kernels_impl.h"

namespace gradfast::cpu {
const CpuKernels& kernels_generic() { return isa_generic::table(); }
}  // namespace gradfast::cpu
