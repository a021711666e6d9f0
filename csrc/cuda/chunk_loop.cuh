// Device building blocks shared by every multi-tensor kernel (norm, scale, clamp, and the
// fused Adam step): a persistent grid-stride loop over the chunks of a tensor list, and
// block-cooperative passes over one chunk with 16-byte vector accesses and several loads
// in flight per thread.
//
// Within a chunk, thread i owns vectors i, i+Block, i+2*Block, ...: consecutive threads
// touch consecutive 16-byte vectors (fully coalesced), and which thread sees which element
// depends only on the chunk's length and alignment, which keeps reductions deterministic.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "block_reduce.cuh"
#include "launch_config.cuh"
#include "meta_table.h"
#include "vec_io.cuh"

namespace gradfast::cuda {

// Calls fn(c, chunk) for the chunks c = blockIdx.x, blockIdx.x + gridDim.x, ... The grid is
// sized to what the device holds at once (persistent_grid), so each block walks several.
template <typename Fn>
__device__ __forceinline__ void for_each_chunk(const MetaTable& table, int64_t n_chunks,
                                               Fn&& fn) {
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) fn(c, table.chunk(c));
}

// Elements before the first 128-byte boundary of base (at most len), or -1 when base is not
// even aligned to its element size (never for torch tensors; then all-scalar). Peeling
// them lets the body of a chunk of a view at an odd offset use 16-byte accesses, and makes
// every warp's 512-byte access cover whole 128-byte lines: a warp store that only partly
// covers a 32-byte sector makes L2 merge it with DRAM, which cost a fifth of the bandwidth
// of in-place updates of misaligned views. Fewer than 128 elements: one per thread.
template <typename T>
__device__ __forceinline__ int vector_head(const T* base, int len) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(base);
  if (addr % sizeof(T) != 0) return -1;
  const int head = (int)(((128 - (addr & 127)) & 127) / sizeof(T));
  return head < len ? head : len;
}

// Visits the elements of base[0, len) that this thread owns: f(lane, x) with `lane` a
// compile-time constant once unrolled (0..Vec16<T>::kN-1), so callers can keep one
// accumulator per lane in registers.
template <typename T, int Block, int Ilp, typename F>
__device__ __forceinline__ void read_chunk(const T* base, int len, F&& f) {
  constexpr int V = Vec16<T>::kN;
  static_assert(Block >= 128 / (int)sizeof(T), "the head must fit one element per thread");
  const int tid = threadIdx.x;
  const int head = vector_head(base, len);
  if (head >= 0) {
    // Scalar head up to the 128-byte boundary (one element per thread).
    if (tid < head) f(0, base[tid]);
    base += head;
    len -= head;
    const int nvec = len / V;
    const Vec16<T>* vbase = reinterpret_cast<const Vec16<T>*>(base);
    for (int i0 = tid; i0 < nvec; i0 += Block * Ilp) {
      // All Ilp loads are issued before the first use: independent requests in flight.
      Vec16<T> r[Ilp];
#pragma unroll
      for (int j = 0; j < Ilp; ++j)
        if (i0 + j * Block < nvec) r[j] = load_vec(vbase + i0 + j * Block);
#pragma unroll
      for (int j = 0; j < Ilp; ++j)
        if (i0 + j * Block < nvec) {
#pragma unroll
          for (int e = 0; e < V; ++e) f(e, r[j].v[e]);
        }
    }
    // Tail: fewer than V elements after the last whole vector.
    for (int i = nvec * V + tid; i < len; i += Block) f(0, base[i]);
  } else {
    // Not even element-aligned: scalar accesses, V in flight per thread.
    for (int i0 = tid; i0 < len; i0 += Block * V) {
      T r[V];
#pragma unroll
      for (int e = 0; e < V; ++e)
        if (i0 + e * Block < len) r[e] = base[i0 + e * Block];
#pragma unroll
      for (int e = 0; e < V; ++e)
        if (i0 + e * Block < len) f(e, r[e]);
    }
  }
}

// base[i] = f(base[i]) for the elements of base[0, len) that this thread owns, in place:
// each element is read and written by the same thread, so no barrier is needed.
template <typename T, int Block, int Ilp, typename F>
__device__ __forceinline__ void update_chunk(T* base, int len, F&& f) {
  constexpr int V = Vec16<T>::kN;
  static_assert(Block >= 128 / (int)sizeof(T), "the head must fit one element per thread");
  const int tid = threadIdx.x;
  const int head = vector_head(base, len);
  if (head >= 0) {
    if (tid < head) base[tid] = f(base[tid]);
    base += head;
    len -= head;
    const int nvec = len / V;
    Vec16<T>* vbase = reinterpret_cast<Vec16<T>*>(base);
    for (int i0 = tid; i0 < nvec; i0 += Block * Ilp) {
      Vec16<T> r[Ilp];
#pragma unroll
      for (int j = 0; j < Ilp; ++j)
        if (i0 + j * Block < nvec) r[j] = load_vec(vbase + i0 + j * Block);
#pragma unroll
      for (int j = 0; j < Ilp; ++j)
        if (i0 + j * Block < nvec) {
#pragma unroll
          for (int e = 0; e < V; ++e) r[j].v[e] = f(r[j].v[e]);
          store_vec(vbase + i0 + j * Block, r[j]);
        }
    }
    for (int i = nvec * V + tid; i < len; i += Block) base[i] = f(base[i]);
  } else {
    for (int i0 = tid; i0 < len; i0 += Block * V) {
      T r[V];
#pragma unroll
      for (int e = 0; e < V; ++e)
        if (i0 + e * Block < len) r[e] = base[i0 + e * Block];
#pragma unroll
      for (int e = 0; e < V; ++e)
        if (i0 + e * Block < len) base[i0 + e * Block] = f(r[e]);
    }
  }
}

}  // namespace gradfast::cuda
