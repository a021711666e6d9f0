// Multi-tensor fused Adam/AdamW step on the CPU: one pass per chunk doing unscaling,
// clipping, regularisation, moments, bias correction and the update.
//
// Chunks are processed in reverse order (last tensor first): the norm pass that precedes a
// clipped step reads the grads front to back, so the grads it read last are the ones most
// likely to still be in the last-level cache when the update starts.
#include <algorithm>
#include <vector>

#include "chunk_index.h"
#include "cpu_kernels.h"
#include "cpu_ops.h"

namespace gradfast::cpu {

void adam_step(const AdamLists& l, DType dt, const AdamHyper& hyper, const AdamFlags& flags,
               const StepControl& control, int64_t* skipped_counter, int num_threads) {
  const StepDecision d = step_decide(control);
  if (d.skip) {
    if (skipped_counter) ++*skipped_counter;
    return;
  }
  // Every tensor's step goes up by one (empty tensors included, as in torch); the update
  // of its elements uses the incremented count.
  std::vector<float> new_step(l.n);
  std::vector<AdamScalars> scalars(l.n);
  for (int64_t t = 0; t < l.n; ++t) {
    new_step[t] = *l.step[t] + 1.0f;
    GF_DISPATCH_DTYPE(dt, scalars[t] = adam_scalars<scalar_t>(hyper, d, new_step[t]));
  }
  const TensorList tl{l.p, l.numels, l.n};
  const ChunkIndex idx(tl);
  const CpuKernels& k = best_kernels();
  const int64_t esize = dtype_size(dt);
  for_each_chunk(
      tl, idx, num_threads,
      [&](int64_t, int64_t t, int64_t start, int64_t len) {
        const int64_t off = start * esize;
        auto at = [off](void* base) { return base ? static_cast<char*>(base) + off : nullptr; };
        const AdamRange r{at(l.p[t]), at(l.g[t]), at(l.m[t]), at(l.v[t]),
                          l.vmax ? at(l.vmax[t]) : nullptr, len};
        k.adam_range(r, dt, flags, scalars[t]);
      },
      /*reverse=*/true);
  for (int64_t t = 0; t < l.n; ++t) *l.step[t] = new_step[t];
}

}  // namespace gradfast::cpu
