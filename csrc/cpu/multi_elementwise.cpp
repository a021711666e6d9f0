// In-place multi-tensor element-wise ops on the CPU (clip scaling, value clamping).
#include <algorithm>

#include "chunk_index.h"
#include "cpu_kernels.h"
#include "cpu_ops.h"

namespace gradfast::cpu {
namespace {

template <typename Fn>
void over_chunks(const TensorList& tl, DType dt, int num_threads, Fn&& fn, bool reverse) {
  const ChunkIndex idx(tl);
  const int esize = dtype_size(dt);
  for_each_chunk(
      tl, idx, num_threads,
      [&](int64_t, int64_t t, int64_t start, int64_t len) {
        fn(static_cast<char*>(tl.ptrs[t]) + start * esize, len);
      },
      reverse);
}

}  // namespace

void multi_scale(const TensorList& tl, DType dt, const void* coef, int num_threads) {
  const double c = dt == DType::Float64 ? *static_cast<const double*>(coef)
                                        : (double)*static_cast<const float*>(coef);
  // x * 1 == x: when the norm is within max_norm (the common case once training settles)
  // the pass would only rewrite every grad unchanged. The CUDA kernel skips it the same way.
  if (c == 1.0) return;
  const CpuKernels& k = best_kernels();
  // Reverse: clip scaling follows the norm pass, whose last chunks are still in cache.
  over_chunks(tl, dt, num_threads, [&](void* x, int64_t n) { k.scale_range(x, n, dt, c); },
              true);
}

void multi_clamp(const TensorList& tl, DType dt, double lo, double hi, int num_threads) {
  const CpuKernels& k = best_kernels();
  over_chunks(tl, dt, num_threads, [&](void* x, int64_t n) { k.clamp_range(x, n, dt, lo, hi); },
              false);
}

}  // namespace gradfast::cpu
