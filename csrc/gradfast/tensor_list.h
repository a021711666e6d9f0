// How a list of tensors crosses from Python into the core: raw pointers and element
// counts, all of one dtype on one device. Chunks of kChunkElems elements are the unit of
// work on both CPU and GPU; their boundaries never depend on thread or block counts, which
// is what makes every reduction bitwise reproducible.
#pragma once
#include <cstdint>

namespace gradfast {

constexpr int64_t kChunkElems = 1 << 16;

inline int64_t chunks_of(int64_t numel) { return (numel + kChunkElems - 1) / kChunkElems; }

struct TensorList {
  void* const* ptrs;       // n data pointers (const for read-only uses)
  const int64_t* numels;   // n element counts
  int64_t n;
};

}  // namespace gradfast
