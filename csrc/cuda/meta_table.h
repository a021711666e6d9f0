// The device copy of a tensor list (layout in cuda_ops.h) and the map from a flat chunk
// index to its tensor and element range.
//
// Plain __host__ __device__ code with no CUDA header, so the index math can be unit-tested
// on the CPU (tests/native/test_meta_table.cpp) exactly as the kernels run it.
#pragma once
#include <cstdint>

#include "../gradfast/macros.h"
#include "../gradfast/tensor_list.h"
#include "table_search.h"

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

  GF_HD int64_t at(int64_t i) const { return table_at(meta, i); }
  GF_HD void* ptr(int64_t t) const { return reinterpret_cast<void*>((intptr_t)at(t)); }
  GF_HD int64_t numel(int64_t t) const { return at(n + t); }
  GF_HD int64_t first_chunk(int64_t t) const { return at(2 * n + t); }  // t in [0, n]

  // The tensor owning chunk c, for 0 <= c < first_chunk(n) (table_search.h): the last t
  // with first_chunk(t) <= c. Tensors with no elements own no chunk and are skipped.
  GF_HD int64_t tensor_of(int64_t c) const { return owner_of(meta, 2 * n, n, c); }

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
