// Maps a flat chunk index to (tensor, element range) for a tensor list.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../gradfast/tensor_list.h"
#include "thread_pool.h"

namespace gradfast::cpu {

class ChunkIndex {
 public:
  explicit ChunkIndex(const TensorList& tl) : first_(tl.n + 1, 0) {
    for (int64_t t = 0; t < tl.n; ++t) {
      first_[t + 1] = first_[t] + chunks_of(tl.numels[t]);
      elems_ += tl.numels[t];
    }
  }
  int64_t total() const { return first_.back(); }
  int64_t elements() const { return elems_; }
  int64_t first_chunk(int64_t tensor) const { return first_[tensor]; }
  // The tensor that owns chunk c (tensors with no elements own no chunk).
  int64_t tensor_of(int64_t c) const {
    return (int64_t)(std::upper_bound(first_.begin(), first_.end(), c) - first_.begin()) - 1;
  }

 private:
  std::vector<int64_t> first_;
  int64_t elems_ = 0;
};

// Small lists run on the calling thread: handing work to another thread costs a few
// microseconds in torch's OpenMP team (its threads spin for a while after each parallel op)
// and tens of microseconds in our own pool (a futex wake-up). Measured on 2 cores: with the
// OpenMP team, 32K elements per thread make a 0.33M-element clip + Adam step 1.9x faster than
// the pool's 256K (160 vs 291 us).
inline int threads_for(int64_t elements, int num_threads) {
  const int64_t useful = elements / min_elems_per_thread();
  return (int)std::max<int64_t>(1, std::min<int64_t>(num_threads, useful));
}

// Runs fn(chunk, tensor, first_element, length) over all chunks of all tensors, in parallel.
// With reverse=true chunks are handed out last first: a pass that follows a front-to-back
// norm pass then starts on the data most likely to still be in the last-level cache.
template <typename Fn>
void for_each_chunk(const TensorList& tl, const ChunkIndex& idx, int num_threads, Fn&& fn,
                    bool reverse = false) {
  const int64_t total = idx.total();
  parallel_for(total, threads_for(idx.elements(), num_threads), [&](int64_t task) {
    const int64_t c = reverse ? total - 1 - task : task;
    const int64_t t = idx.tensor_of(c);
    const int64_t start = (c - idx.first_chunk(t)) * kChunkElems;
    fn(c, t, start, std::min(kChunkElems, tl.numels[t] - start));
  });
}

}  // namespace gradfast::cpu
