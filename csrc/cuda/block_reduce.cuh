// Deterministic block-wide reduction: a fixed shuffle tree inside each warp, then warp 0
// folds the per-warp results with the same tree. Which value meets which depends only on
// thread indices, never on timing, so a block always produces the same bits for the same
// inputs (no atomics anywhere).
#pragma once
#include <cuda_runtime.h>

namespace gradfast::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Lane 0 ends with the combination of all 32 lanes' values (others hold partial results).
template <typename A, typename Combine>
__device__ __forceinline__ A warp_reduce(A v, Combine combine) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v = combine(v, __shfl_down_sync(kFullMask, v, offset));
  return v;
}

// Every thread of the block must call it (it synchronises). The result is valid in thread 0
// only. `smem` holds Block/32 values; it may be reused as soon as this returns, since the
// trailing barrier keeps a following call from overwriting it while warp 0 still reads.
template <int Block, typename A, typename Combine>
__device__ __forceinline__ A block_reduce(A v, Combine combine, A identity, A* smem) {
  static_assert(Block % 32 == 0 && Block / 32 <= 32, "block must be 1..32 whole warps");
  constexpr int kWarps = Block / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, combine);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_reduce(lane < kWarps ? smem[lane] : identity, combine);
  __syncthreads();
  return v;
}

}  // namespace gradfast::cuda
