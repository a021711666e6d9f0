// Reading the int64 tables the kernels get from the host, and finding which tensor owns an
// index of a prefix row: shared by meta_table.h (chunks) and agc_table.h (AGC work items).
// Plain __host__ __device__ code with no CUDA header, so host tests run the same search
// (the binary one; the GPU's is the 32-way warp search below, with the same answer).
#pragma once
#include <cstdint>

#include "../gradfast/macros.h"

namespace gradfast::cuda {

// meta[i] of a table that stays read-only for the whole kernel: on the GPU through the
// non-coherent path, which keeps it in L1 for the searches of every block.
GF_HD int64_t table_at(const int64_t* meta, int64_t i) {
#if defined(__CUDA_ARCH__)
  return (int64_t)__ldg(reinterpret_cast<const long long*>(meta) + i);
#else
  return meta[i];
#endif
}

// row = meta + row_off holds n+1 non-decreasing values starting at 0 (prefix sums of what
// each of n tensors owns). For 0 <= c < row[n]: the last t with row[t] <= c, i.e. the
// tensor owning index c (tensors owning nothing are skipped, their row value equals the
// next one's).
GF_HD int64_t owner_binary(const int64_t* meta, int64_t row_off, int64_t n, int64_t c) {
  int64_t lo = 0, hi = n;  // invariant: row[lo] <= c < row[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (table_at(meta, row_off + mid) <= c) lo = mid; else hi = mid;
  }
  return lo;
}

#if defined(__CUDA_ARCH__)
// The same search, 32-way: each lane of the warp probes one point of [lo, hi) and a ballot
// keeps the last probe with row <= c (the row is non-decreasing, so the probes that pass form
// a prefix of the lanes). Two dependent loads cover 1024 tensors where a binary search needs
// ten, and under a saturated memory system each costs microseconds.
// Every lane of the warp must call it with the same c; all get the same answer.
__device__ __forceinline__ int64_t owner_warp(const int64_t* meta, int64_t row_off, int64_t n,
                                              int64_t c) {
  const int lane = threadIdx.x & 31;
  int64_t lo = 0, hi = n;
  while (hi - lo > 1) {
    const int64_t step = (hi - lo + 31) / 32;
    const int64_t probe = lo + lane * step;  // lane 0 probes lo, known to pass
    const bool pass = probe < hi && table_at(meta, row_off + probe) <= c;
    const int last = 31 - __clz(__ballot_sync(0xffffffffu, pass));
    lo += last * step;
    const int64_t next_hi = lo + step;  // the probe after `last` failed, or is >= hi
    hi = next_hi < hi ? next_hi : hi;
  }
  return lo;
}
#endif

// On the GPU the warp search (all lanes of the warp with the same c), on the host the binary.
GF_HD int64_t owner_of(const int64_t* meta, int64_t row_off, int64_t n, int64_t c) {
#if defined(__CUDA_ARCH__)
  return owner_warp(meta, row_off, n, c);
#else
  return owner_binary(meta, row_off, n, c);
#endif
}

}  // namespace gradfast::cuda
