// One-launch global-norm clip + Adam step on CUDA (opt-in; adam_cuda.h, clip_adam_step).
//
// The default step is two launches per (device, dtype) group: multi_norm writes the total
// grad norm, then adam_kernel reads it. Here one cooperative persistent kernel does both:
//
//   phase 1  norm_phase (norm_phase.cuh), the very code multi_norm_kernel runs, with the
//            same block size (kNormBlock), chunking, per-chunk partials, per-tensor
//            completion counters and fold order. Its result does not depend on the grid
//            size, so *total_out (and *coef_out) get multi_norm's bits. The last block to
//            finish writes them.
//   barrier  cooperative_groups::this_grid().sync(): every block's phase-1 writes (the
//            total above all) are visible to every block after it.
//   phase 2  the Adam update of multi_adam.cu (adam_tile.cuh: the same per-element
//            adam_element, the same step-count protocol, the same step_decide), reading the
//            total written in phase 1. Instead of one block per tile, each block walks tiles
//            in a grid-stride loop, in DECREASING tile order: block b takes tiles
//            n_tiles-1-b, n_tiles-1-b-G, ... Phase 1's grid-stride loop over chunks reads
//            the grads in increasing flat order (tensor by tensor), so its last round read
//            the end of the list; tiles map onto the same flat order, so the first round of
//            phase 2 updates the tiles whose grads were read last and may still be in L2.
//
// The grid is min(work, co-resident blocks) with work = max(chunks, tiles) and the
// co-resident count from the occupancy API for this kernel: cudaLaunchCooperativeKernel
// refuses a grid that cannot be resident at once, so the barrier can never deadlock. When
// the device cannot launch cooperative kernels, or the launch fails, the two launches run
// instead (multi_norm then adam_step, on the same outputs and workspaces): same bits.
//
// No host sync and no allocation: the norm workspace is left zeroed by norm_phase, the Adam
// completion counters by the block that completes each tensor (as in adam_kernel), and a
// skipped step touches no counter. So the launch replays inside a CUDA graph.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "adam_cuda.h"
#include "adam_tile.cuh"
#include "cuda_ops.h"
#include "device_guard.h"
#include "launch_config.cuh"
#include "norm_phase.cuh"

namespace gradfast::cuda {
namespace {

using namespace norm_detail;
using namespace adam_detail;

constexpr int kClipAdamThreads = kNormBlock;  // phase 1 must run multi_norm's block size

template <typename T>
struct ClipAdamArgs {
  NormArgs<T> norm;
  const int64_t* meta;  // the Adam table (adam_cuda.h)
  int64_t n;
  int64_t n_tiles;
  AdamHyper h;
  AdamFlags f;
  StepControl c;        // total_dtype: T's code; total_norm: phase 2 reads norm.total_out
  long long* skipped;
  unsigned int* counters;
};

// A value written by another block of this grid, read from L2 (never a stale L1 line).
template <typename T>
__device__ __forceinline__ T load_l2(const T* ptr) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "scalar storage type");
  T out;
  if constexpr (sizeof(T) == 8) {
    const long long bits = __ldcg(reinterpret_cast<const long long*>(ptr));
    memcpy(&out, &bits, 8);
  } else if constexpr (sizeof(T) == 4) {
    const unsigned int bits = __ldcg(reinterpret_cast<const unsigned int*>(ptr));
    memcpy(&out, &bits, 4);
  } else {
    const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(ptr));
    memcpy(&out, &bits, 2);
  }
  return out;
}

template <NormKind K, typename T>
__global__ void __launch_bounds__(kClipAdamThreads) clip_adam_kernel(ClipAdamArgs<T> a) {
  // ---- phase 1: the global norm, exactly as multi_norm_kernel ----
  norm_phase<K, T>(a.norm);

  // ---- barrier: the total (written by phase 1's last block) is visible to all ----
  cooperative_groups::this_grid().sync();

  // ---- phase 2: the Adam update of every tile ----
  __shared__ AdamScalars s_sh;
  __shared__ AdamTile tile_sh;
  __shared__ bool skip_sh;
  __shared__ float step_sh;
  StepDecision d;  // thread 0's
  if (threadIdx.x == 0) {
    // The total through a local copy read from L2: step_decide reads through the pointer.
    const T total = load_l2(a.norm.total_out);
    StepControl c = a.c;
    c.total_norm = &total;  // c.total_dtype is the grads' dtype (set by clip_adam_step)
    d = step_decide(c);
    skip_sh = d.skip;
    if (d.skip && blockIdx.x == 0 && a.skipped) ++*a.skipped;
  }
  __syncthreads();
  if (skip_sh) return;  // block-uniform; no counter was touched

  for (int64_t k = blockIdx.x; k < a.n_tiles; k += gridDim.x) {
    const int64_t j = a.n_tiles - 1 - k;  // decreasing: the most recently read grads first
    if (threadIdx.x == 0) {
      const AdamTile tile = find_tile(a.meta, a.n, j);
      tile_sh = tile;
      // The old count: the tensor's new count is written only after all its tiles,
      // this one included, are counted (adam_tile_done), so this read always sees it.
      const float* step = reinterpret_cast<const float*>(a.meta[5 * a.n + tile.tensor]);
      const float new_step = __ldcg(step) + 1.0f;
      step_sh = new_step;
      s_sh = adam_scalars<T>(a.h, d, new_step);
    }
    __syncthreads();
    const AdamTile tile = tile_sh;
    const AdamScalars s = s_sh;
    adam_tile_elements<T, kClipAdamThreads>(a.meta, a.n, a.f, s, tile);
    // Every thread's element writes and shared reads of this tile are done: thread 0 may
    // count the tile and then overwrite the shared tile state on the next iteration.
    __syncthreads();
    if (threadIdx.x == 0) adam_tile_done(a.meta, a.n, tile.tensor, step_sh, a.counters);
  }
}

template <NormKind K, typename T>
bool launch_clip_adam(const DeviceList& grads, const AdamDeviceList& list, double p,
                      void* norm_ws, void* total_out, void* coef_out, const AdamHyper& hyper,
                      const AdamFlags& flags, const StepControl& control, long long* skipped,
                      void* adam_ws, int device, cudaStream_t stream) {
  ClipAdamArgs<T> a;
  // The clip coefficient of phase 1 uses control.max_norm, as a multi_norm call would.
  a.norm = make_norm_args<T>(grads, p, norm_ws, nullptr, total_out, coef_out,
                             control.max_norm);
  a.meta = list.meta;
  a.n = list.n;
  a.n_tiles = list.n_tiles;
  a.h = hyper;
  a.f = flags;
  a.c = control;
  a.skipped = skipped;
  a.counters = static_cast<unsigned int*>(adam_ws);
  constexpr auto kernel = clip_adam_kernel<K, T>;
  // Never more blocks than can be resident at once (the barrier needs them all running).
  const int64_t work = std::max<int64_t>(grads.n_chunks, list.n_tiles);
  const unsigned grid = persistent_grid<kernel, kClipAdamThreads>(work, device);
  void* params[] = {&a};
  const cudaError_t err = cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel), dim3(grid), dim3(kClipAdamThreads), params, 0,
      stream);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the launch error: the caller falls back
    return false;
  }
  return true;
}

}  // namespace

int clip_adam_step(const DeviceList& grads, const AdamDeviceList& list, DType dt,
                   NormKind kind, double p, void* norm_workspace, void* total_out,
                   void* coef_out, const AdamHyper& hyper, const AdamFlags& flags,
                   const StepControl& control, long long* skipped_counter,
                   void* adam_workspace, bool cooperative, int device, intptr_t stream) {
  if (norm_workspace == nullptr || adam_workspace == nullptr || total_out == nullptr)
    throw std::invalid_argument("gradfast clip_adam_step: workspaces and total_out are required");
  if (reinterpret_cast<uintptr_t>(norm_workspace) % 16 != 0)
    throw std::invalid_argument("gradfast clip_adam_step: norm workspace must be 16-byte aligned");
  if (list.n <= 0 || list.n_tiles < list.n || list.meta == nullptr || grads.n != list.n ||
      grads.n_chunks < 0 || (grads.n_chunks > 0 && grads.meta == nullptr))
    throw std::invalid_argument("gradfast clip_adam_step: bad tensor lists");
  if ((int)kind < 0 || (int)kind > (int)NormKind::Lp || (int)dt < 0 ||
      (int)dt > (int)DType::BFloat16)
    throw std::invalid_argument("gradfast clip_adam_step: unknown dtype or norm kind");
  // Both paths read the total that their norm writes, in the grads' dtype.
  StepControl c = control;
  c.total_norm = total_out;
  c.total_dtype = (int)dt;
  {
    DeviceGuard guard(device);
    const auto s = reinterpret_cast<cudaStream_t>(stream);
    bool ran = false;
    if (cooperative && cooperative_launch_supported(device)) {
      GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, ran = launch_clip_adam<kNorm, scalar_t>(
          grads, list, p, norm_workspace, total_out, coef_out, hyper, flags, c,
          skipped_counter, adam_workspace, device, s)));
    }
    if (ran) return 1;
  }
  // The two-launch path, on the same outputs: the norm, then the update reading it.
  multi_norm(grads, dt, kind, p, norm_workspace, nullptr, total_out, coef_out,
             control.max_norm, device, stream);
  adam_step(list, dt, hyper, flags, c, skipped_counter, adam_workspace, device, stream);
  return 2;
}

}  // namespace gradfast::cuda
