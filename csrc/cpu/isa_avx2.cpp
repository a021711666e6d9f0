// The avx2 build of the CPU range kernels (flags set in CMakeLists.txt).
#define GF_ISA_NS isa_avx2
#define GF_ISA_NAME "avx2"
#include "isa_kernels_impl.h"

namespace gradfast::cpu {
const CpuKernels& kernels_avx2() { return isa_avx2::table(); }
}  // namespace gradfast::cpu
