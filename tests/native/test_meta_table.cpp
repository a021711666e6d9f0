// Host-side check of the chunk index math the CUDA kernels run (csrc/cuda/meta_table.h is
// __host__ __device__ and free of CUDA headers, so the same code compiles here):
//   g++ -std=c++17 -O2 -Wall -Wextra tests/native/test_meta_table.cpp -o /tmp/t && /tmp/t
// For random tensor lists (empty tensors, exact chunk multiples, tensors past 2^31 elements)
// every chunk must map to the right tensor and element range, and the ranges of each tensor
// must tile it exactly once.
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/cuda/meta_table.h"

using gradfast::kChunkElems;
using gradfast::cuda::ChunkRef;
using gradfast::cuda::MetaTable;

static int passed = 0, failed = 0;

static void expect(bool ok, const char* what, long long a, long long b) {
  if (ok) { ++passed; return; }
  if (++failed < 20) std::printf("FAIL %s (%lld, %lld)\n", what, a, b);
}

static void check_list(const std::vector<int64_t>& numels) {
  const int64_t n = (int64_t)numels.size();
  std::vector<int64_t> meta(3 * n + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    meta[t] = 0x1000 * (t + 1);  // pointers are never dereferenced here
    meta[n + t] = numels[t];
    meta[2 * n + t + 1] = meta[2 * n + t] + gradfast::chunks_of(numels[t]);
  }
  const int64_t n_chunks = meta[3 * n];
  const MetaTable table{meta.data(), n};
  std::vector<int64_t> covered(n, 0), next_start(n, 0);
  int64_t owner = 0;  // reference: linear walk over tensors
  bool all_ok = true;
  for (int64_t c = 0; c < n_chunks; ++c) {
    while (meta[2 * n + owner + 1] <= c) ++owner;
    const ChunkRef r = table.chunk(c);
    const bool ok = r.tensor == owner && r.first == meta[2 * n + owner] &&
                    r.end == meta[2 * n + owner + 1] && r.start == next_start[owner] &&
                    r.len >= 1 && r.len <= kChunkElems && r.start + r.len <= numels[owner] &&
                    table.ptr(r.tensor) == reinterpret_cast<void*>(0x1000 * (owner + 1));
    if (!ok) { expect(false, "chunk", c, r.tensor); all_ok = false; continue; }
    covered[owner] += r.len;
    next_start[owner] += r.len;
  }
  for (int64_t t = 0; t < n; ++t)
    if (covered[t] != numels[t]) { expect(false, "coverage", t, covered[t]); all_ok = false; }
  if (all_ok) expect(true, "", 0, 0);
}

int main() {
  check_list({});
  check_list({0});
  check_list({1});
  check_list({0, 0, 0});
  check_list({kChunkElems});
  check_list({kChunkElems + 1, 0, kChunkElems - 1, 0});
  check_list({0, 5, 0, 0, 3 * kChunkElems, 0});
  check_list({(int64_t)1 << 33, 7, ((int64_t)1 << 31) + 3});  // past 2^31 elements
  std::mt19937_64 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = (int)(rng() % 200) + 1;
    std::vector<int64_t> numels(n);
    for (auto& x : numels) {
      switch (rng() % 5) {
        case 0: x = 0; break;
        case 1: x = (int64_t)(rng() % 16) * kChunkElems; break;
        case 2: x = (int64_t)(rng() % 300); break;
        default: x = (int64_t)(rng() % (8 * kChunkElems)); break;
      }
    }
    check_list(numels);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
