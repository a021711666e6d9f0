// The device copy of a tensor list (layout in cuda_ops.h) and the map from a flat chunk
// index to its tensor and element range.
//
// Plain __host__ __device__ code with no CUDA header, so the index math can be unit-tested
// on the CPU (tests/native/test_meta_table.cpp) exactly as the kernels run it.
#pragma once
#include <cstdint>

#include "../gradfast/macros.h"
#include "../gradfast/tensor_list.h"

namespace gradfast::cuda {

// One chunk of one tensor: elements [start, start + len) of `tensor`.
struct ChunkRef {
  int64_t tensor;
  int64_t first;  // the tensor's first chunk
  int64_t end;    // one past the tensor's last chunk
  int64_t start;  // first element of this chunk within the tensor (64-bit: tensors may
                  // hold more than 2^31 elements)
  int len;        // elements in this chunk, 1..kChunkElems (fits an int by construction)
};

struct MetaTable {
  const int64_t* meta;  // 3n+1 int64: ptrs[n], numels[n], first_chunk[n+1]
  int64_t n;

  GF_HD int64_t at(int64_t i) const {
#if defined(__CUDA_ARCH__)
    // Read-only for the whole kernel: the non-coherent path keeps it in L1 for the
    // binary searches of every chunk.
    return (int64_t)__ldg(reinterpret_cast<const long long*>(meta) + i);
#else
    return meta[i];
#endif
  }
  GF_HD void* ptr(int64_t t) const { return reinterpret_cast<void*>((intptr_t)at(t)); }
  GF_HD int64_t numel(int64_t t) const { return at(n + t); }
  GF_HD int64_t first_chunk(int64_t t) const { return at(2 * n + t); }  // t in [0, n]

  // The tensor owning chunk c, for 0 <= c < first_chunk(n): the last t with
  // first_chunk(t) <= c. Tensors with no elements own no chunk and are skipped, since
  // their first_chunk equals the next tensor's.
  GF_HD int64_t tensor_of(int64_t c) const {
#if defined(__CUDA_ARCH__)
    return tensor_of_warp(c);
#else
    return tensor_of_binary(c);
#endif
  }

  GF_HD int64_t tensor_of_binary(int64_t c) const {
    int64_t lo = 0, hi = n;  // invariant: first_chunk(lo) <= c < first_chunk(hi)
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (first_chunk(mid) <= c) lo = mid; else hi = mid;
    }
    return lo;
  }

#if defined(__CUDA_ARCH__)
  // The same search, 32-way: each lane of the warp probes one point of [lo, hi) and a ballot
  // keeps the last probe with first_chunk <= c (first_chunk is non-decreasing, so the probes
  // that pass form a prefix of the lanes). Two dependent loads cover 1024 tensors where a
  // binary search needs ten, and under a saturated memory system each costs microseconds.
  // Every lane of the warp must call it with the same c; all get the same answer.
  __device__ __forceinline__ int64_t tensor_of_warp(int64_t c) const {
    const int lane = threadIdx.x & 31;
    int64_t lo = 0, hi = n;  // invariant: first_chunk(lo) <= c < first_chunk(hi)
    while (hi - lo > 1) {
      const int64_t step = (hi - lo + 31) / 32;
      const int64_t probe = lo + lane * step;  // lane 0 probes lo, known to pass
      const bool pass = probe < hi && first_chunk(probe) <= c;
      const int last = 31 - __clz(__ballot_sync(0xffffffffu, pass));
      lo += last * step;
      const int64_t next_hi = lo + step;  // the probe after `last` failed, or is >= hi
      hi = next_hi < hi ? next_hi : hi;
    }
    return lo;
  }
#endif

  GF_HD ChunkRef chunk(int64_t c) const {
    ChunkRef r;
    r.tensor = tensor_of(c);
    r.first = first_chunk(r.tensor);
    r.end = first_chunk(r.tensor + 1);
    r.start = (c - r.first) * kChunkElems;
    const int64_t left = numel(r.tensor) - r.start;
    r.len = (int)(left < kChunkElems ? left : kChunkElems);
    return r;
  }
};

}  // namespace gradfast::cuda
