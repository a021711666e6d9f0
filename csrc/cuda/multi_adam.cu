// The fused Adam/AdamW step on CUDA: one launch per (device, dtype) group, one block per
// tile of kAdamTileElems elements, 16-byte vector loads and stores (vec_io.cuh, L2-only
// streaming) where every array of the tile is 16-byte aligned. The per-element math is
// adam_math.h's adam_element, the function the CPU loops run. See adam_cuda.h for the table
// layout and the step-count protocol.
#include <cuda_runtime.h>

#include "../gradfast/adam_math.h"
#include "adam_cuda.h"
#include "adam_tile.cuh"
#include "device_guard.h"

namespace gradfast::cuda {
namespace {

using namespace adam_detail;

constexpr int kAdamThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kAdamThreads)
adam_kernel(const int64_t* __restrict__ meta, int64_t n, AdamHyper h, AdamFlags f,
            StepControl c, long long* skipped, unsigned int* counters) {
  __shared__ AdamScalars s_sh;
  __shared__ AdamTile tile_sh;
  __shared__ bool skip_sh;
  __shared__ float step_sh;
  if (threadIdx.x == 0) {
    const StepDecision d = step_decide(c);
    skip_sh = d.skip;
    if (d.skip && blockIdx.x == 0 && skipped) ++*skipped;
    if (!d.skip) {
      const AdamTile tile = find_tile(meta, n, blockIdx.x);
      tile_sh = tile;
      const float* step = reinterpret_cast<const float*>(meta[5 * n + tile.tensor]);
      const float new_step = *step + 1.0f;
      step_sh = new_step;
      s_sh = adam_scalars<T>(h, d, new_step);
    }
  }
  __syncthreads();
  if (skip_sh) return;
  const AdamTile tile = tile_sh;
  const AdamScalars s = s_sh;
  adam_tile_elements<T, kAdamThreads>(meta, n, f, s, tile);

  // The block that completes the tensor's last tile writes the incremented step count.
  __syncthreads();
  if (threadIdx.x == 0) adam_tile_done(meta, n, tile.tensor, step_sh, counters);
}

}  // namespace

size_t adam_workspace_bytes(int64_t n_tensors) {
  return (size_t)(n_tensors > 0 ? n_tensors : 1) * sizeof(unsigned int);
}

void adam_step(const AdamDeviceList& list, DType dt, const AdamHyper& hyper,
               const AdamFlags& flags, const StepControl& control, long long* skipped_counter,
               void* workspace, int device, intptr_t stream) {
  if (list.n == 0 || list.n_tiles == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  auto* counters = static_cast<unsigned int*>(workspace);
  GF_DISPATCH_DTYPE(dt, adam_kernel<scalar_t><<<(unsigned int)list.n_tiles, kAdamThreads, 0, st>>>(
      list.meta, list.n, hyper, flags, control, skipped_counter, counters));
  check(cudaGetLastError(), "adam_kernel launch");
}

}  // namespace gradfast::cuda
