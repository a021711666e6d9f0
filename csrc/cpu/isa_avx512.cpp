// The avx512 build of the CPU range kernels (flags set in CMakeLists.txt).
#define GF_ISA_NS isa_avx512
#define GF_ISA_NAME "avx512"
#include "isa_kernels_impl.h"

namespace gradfast::cpu {
const CpuKernels& kernels_avx512() { return isa_avx512::table(); }
}  // namespace gradfast::cpu
