// Multi-tensor operations on host memory: the CPU back end of gradfast.
#pragma once
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"
#include "../gradfast/tensor_list.h"

namespace gradfast::cpu {

// Norms of every tensor and of all of them together, with torch's semantics:
//   per_tensor_out[n]  each tensor's norm rounded to dt, stored in the math type
//                      (float for fp32/fp16/bf16, double for fp64)
//   total_out          the norm of the per-tensor norms, stored in dt
//   coef_out           optional (nullptr to skip): torch's clip coefficient for max_norm,
//                      stored in the math type
void multi_norm(const TensorList& tensors, DType dt, NormKind kind, double p,
                void* per_tensor_out, void* total_out, void* coef_out, double max_norm,
                int num_threads);

// x *= coef for every tensor; coef points at one value of the math type.
void multi_scale(const TensorList& tensors, DType dt, const void* coef, int num_threads);

// x = clamp(x, lo, hi) for every tensor.
void multi_clamp(const TensorList& tensors, DType dt, double lo, double hi, int num_threads);

}  // namespace gradfast::cpu
