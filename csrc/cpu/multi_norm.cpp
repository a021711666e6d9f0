// Multi-tensor norm on the CPU: chunk partials in parallel, then a serial fold in chunk
// order, so the result is bitwise identical for any thread count.
#include <algorithm>
#include <vector>

#include "chunk_index.h"
#include "cpu_kernels.h"
#include "cpu_ops.h"

namespace gradfast::cpu {
namespace {

template <NormKind K, typename T>
void fold(const TensorList& tl, const ChunkIndex& idx, const std::vector<double>& partials,
          double p, void* per_tensor_out, void* total_out, void* coef_out, double max_norm) {
  using A = math_t<T>;
  const NormOp<K, A> op{(A)p};
  A* per_tensor = static_cast<A*>(per_tensor_out);
  A total_acc = op.identity();
  for (int64_t t = 0; t < tl.n; ++t) {
    A acc = op.identity();
    const int64_t end = idx.first_chunk(t + 1);
    for (int64_t c = idx.first_chunk(t); c < end; ++c) acc = op.combine(acc, (A)partials[c]);
    const A norm = round_to<T>(op.finalize(acc));
    if (per_tensor) per_tensor[t] = norm;
    total_acc = fold_tensor_norms(op, total_acc, norm);
  }
  const A total = round_to<T>(op.finalize(total_acc));
  *static_cast<T*>(total_out) = StoreAs<T>::from(total);
  if (coef_out) *static_cast<A*>(coef_out) = clip_coefficient<T>(total, max_norm);
}

}  // namespace

void multi_norm(const TensorList& tl, DType dt, NormKind kind, double p, void* per_tensor_out,
                void* total_out, void* coef_out, double max_norm, int num_threads) {
  const ChunkIndex idx(tl);
  std::vector<double> partials(idx.total());
  const CpuKernels& k = best_kernels();
  const int esize = dtype_size(dt);
  for_each_chunk(tl, idx, num_threads, [&](int64_t c, int64_t t, int64_t start, int64_t len) {
    const char* base = static_cast<const char*>(tl.ptrs[t]) + start * esize;
    partials[c] = k.norm_range(base, len, dt, kind, p);
  });
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, fold<kNorm, scalar_t>(
      tl, idx, partials, p, per_tensor_out, total_out, coef_out, max_norm)));
}

}  // namespace gradfast::cpu
