// Multi-tensor norm on the GPU in one kernel launch, deterministic and graph-replayable.
//
// A persistent grid walks the chunks. For each chunk a block computes its partial
// accumulator (fixed per-thread order, fixed block tree). Then:
//   - a tensor of one chunk gets its norm from that partial directly;
//   - otherwise the partial goes to workspace partials[c], and the block that completes the
//     tensor's last chunk (counted with atomicInc on the tensor's counter, after a
//     __threadfence: the classic threadFenceReduction pattern) folds the tensor's partials
//     with a fixed strided-then-tree order into its norm;
//   - the last block of the grid to finish (a grid counter) folds the per-tensor norms,
//     again in a fixed order, into the total and the clip coefficient, and also writes the
//     norms of tensors with no elements (they own no chunk, so no other block sees them).
// Every value is a function of the data alone, never of which block finished when. Each
// launch leaves the whole workspace zeroed, as it found it: the counters wrap back to 0 by
// atomicInc's own modulus, and every scratch value is zeroed by the thread that reads it
// last. So there is no memset and no host sync, launches replay inside a CUDA graph, and one
// workspace serves any sequence of lists of any sizes on one stream (each list's layout
// overlaps the others'). Launches that may run concurrently must not share a workspace.
#include <cuda_runtime.h>

#include <stdexcept>

#include "cuda_ops.h"
#include "device_guard.h"
#include "norm_phase.cuh"

namespace gradfast::cuda {
namespace {

using namespace norm_detail;

// The device code is norm_phase.cuh's, shared with the one-launch clip + Adam kernel.
template <NormKind K, typename T>
__global__ void __launch_bounds__(kNormBlock) multi_norm_kernel(NormArgs<T> a) {
  norm_phase<K, T>(a);
}

template <NormKind K, typename T>
void launch_norm(const DeviceList& list, double p, void* workspace, void* per_tensor_out,
                 void* total_out, void* coef_out, double max_norm, int device,
                 cudaStream_t stream) {
  const NormArgs<T> a =
      make_norm_args<T>(list, p, workspace, per_tensor_out, total_out, coef_out, max_norm);
  constexpr auto kernel = multi_norm_kernel<K, T>;
  const unsigned grid = persistent_grid<kernel, kNormBlock>(list.n_chunks, device);
  kernel<<<grid, kNormBlock, 0, stream>>>(a);
  check(cudaGetLastError(), "multi_norm launch");
}

}  // namespace

size_t norm_workspace_bytes(int64_t n_tensors, int64_t n_chunks, DType dt) {
  return NormWorkspace(n_tensors, n_chunks, dt == DType::Float64 ? sizeof(double) : sizeof(float))
      .bytes;
}

void multi_norm(const DeviceList& list, DType dt, NormKind kind, double p, void* workspace,
                void* per_tensor_out, void* total_out, void* coef_out, double max_norm,
                int device, intptr_t stream) {
  if (workspace == nullptr || total_out == nullptr)
    throw std::invalid_argument("gradfast multi_norm: workspace and total_out are required");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    throw std::invalid_argument("gradfast multi_norm: workspace must be 16-byte aligned");
  if (list.n < 0 || list.n_chunks < 0 || (list.n_chunks > 0 && list.meta == nullptr))
    throw std::invalid_argument("gradfast multi_norm: bad tensor list");
  if ((int)kind < 0 || (int)kind > (int)NormKind::Lp || (int)dt < 0 ||
      (int)dt > (int)DType::BFloat16)
    throw std::invalid_argument("gradfast multi_norm: unknown dtype or norm kind");
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, launch_norm<kNorm, scalar_t>(
      list, p, workspace, per_tensor_out, total_out, coef_out, max_norm, device, s)));
}

}  // namespace gradfast::cuda
