// Multi-tensor fused SGD step on the CPU: one pass per chunk doing unscaling, clipping,
// regularisation, momentum and the update.
//
// Chunks are processed in reverse order (last tensor first), as multi_adam.cpp: the norm
// pass that precedes a clipped step reads the grads front to back, so the grads it read last
// are the ones most likely to still be in the last-level cache when the update starts.
#include "chunk_index.h"
#include "cpu_kernels.h"
#include "sgd_cpu.h"

namespace gradfast::cpu {

void sgd_step(const SgdLists& l, DType dt, const SgdHyper& hyper, const SgdFlags& flags,
              const StepControl& control, int64_t* skipped_counter, int num_threads) {
  const StepDecision d = step_decide(control);
  if (d.skip) {
    if (skipped_counter) ++*skipped_counter;
    return;
  }
  SgdScalars s;
  GF_DISPATCH_DTYPE(dt, s = sgd_scalars<scalar_t>(hyper, d));
  auto is_first = [&](int64_t t) {
    return flags.momentum && l.first && l.first[t] && *l.first[t] != 0;
  };
  const TensorList tl{l.p, l.numels, l.n};
  const ChunkIndex idx(tl);
  const CpuKernels& k = best_kernels();
  const int64_t esize = dtype_size(dt);
  for_each_chunk(
      tl, idx, num_threads,
      [&](int64_t, int64_t t, int64_t start, int64_t len) {
        const int64_t off = start * esize;
        auto at = [off](void* base) { return base ? static_cast<char*>(base) + off : nullptr; };
        const SgdRange r{at(l.p[t]), at(l.g[t]), flags.momentum ? at(l.buf[t]) : nullptr, len};
        k.sgd_range(r, dt, flags, s, is_first(t));
      },
      /*reverse=*/true);
  // Flags are cleared after every chunk has read them.
  for (int64_t t = 0; t < l.n; ++t)
    if (is_first(t)) *l.first[t] = 0;
}

}  // namespace gradfast::cpu
