// The fused SGD step on CUDA: one launch per (device, dtype) group, one block per tile of
// kSgdTileElems elements, 16-byte vector loads and stores (vec_io.cuh, L2-only streaming)
// where every array of the tile is 16-byte aligned. The per-element math is sgd_math.h's
// sgd_element, the function the CPU loops run. See sgd_cuda.h for the table layout and the
// first-step protocol.
#include <cuda_runtime.h>

#include "../gradfast/sgd_math.h"
#include "device_guard.h"
#include "sgd_cuda.h"
#include "vec_io.cuh"

namespace gradfast::cuda {
namespace {

constexpr int kSgdThreads = 256;

struct SgdTile {
  int64_t tensor;
  int64_t start;  // first element of the tile
  int64_t len;    // elements in the tile (0 for an empty tensor)
};

__device__ __forceinline__ SgdTile find_sgd_tile(const int64_t* meta, int64_t n, int64_t tile) {
  const int64_t* first = meta + 5 * n;
  int64_t lo = 0, hi = n - 1;  // the last t with first[t] <= tile
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (first[mid] <= tile) lo = mid; else hi = mid - 1;
  }
  const int64_t numel = meta[4 * n + lo];
  const int64_t start = (tile - first[lo]) * kSgdTileElems;
  const int64_t left = numel - start;
  return {lo, start, left < kSgdTileElems ? (left > 0 ? left : 0) : kSgdTileElems};
}

template <typename T>
__device__ __forceinline__ void sgd_scalar_elem(const SgdFlags& f, const SgdScalars& s,
                                                bool first, T* p, T* g, T* buf, int64_t i) {
  using M = math_t<T>;
  M pi = load_math(p[i]), gi = load_math(g[i]);
  M bi = (f.momentum && !first) ? load_math(buf[i]) : (M)0;
  sgd_element<T>(f, s, first, pi, gi, bi);
  p[i] = StoreAs<T>::from(pi);
  if (f.momentum) buf[i] = StoreAs<T>::from(bi);
  if (f.unscale) g[i] = StoreAs<T>::from(gi);
}

// The elements of one tile, by the Threads threads of the block (each element is read and
// written by one thread only; which thread does not change any value).
template <typename T, int Threads>
__device__ __forceinline__ void sgd_tile_elements(const int64_t* meta, int64_t n,
                                                  const SgdFlags& f, const SgdScalars& s,
                                                  bool first, const SgdTile& tile) {
  using M = math_t<T>;
  const int64_t t = tile.tensor;
  T* p = reinterpret_cast<T*>(meta[t]) + tile.start;
  T* g = reinterpret_cast<T*>(meta[n + t]) + tile.start;
  T* buf = f.momentum ? reinterpret_cast<T*>(meta[2 * n + t]) + tile.start : nullptr;
  const int64_t len = tile.len;
  const bool read_buf = f.momentum && !first;

  constexpr int V = Vec16<T>::kN;
  const uintptr_t mis = (reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(buf)) & 15u;
  int64_t done = 0;
  if (mis == 0) {
    const int64_t nvec = len / V;
    auto* pv = reinterpret_cast<Vec16<T>*>(p);
    auto* gv = reinterpret_cast<Vec16<T>*>(g);
    auto* bv = reinterpret_cast<Vec16<T>*>(buf);
    for (int64_t j = threadIdx.x; j < nvec; j += Threads) {
      Vec16<T> pp = load_vec(pv + j), gp = load_vec(gv + j);
      Vec16<T> bp;
      if (read_buf) bp = load_vec(bv + j);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        M pi = load_math(pp.v[k]), gi = load_math(gp.v[k]);
        M bi = read_buf ? load_math(bp.v[k]) : (M)0;
        sgd_element<T>(f, s, first, pi, gi, bi);
        pp.v[k] = StoreAs<T>::from(pi);
        gp.v[k] = StoreAs<T>::from(gi);
        if (f.momentum) bp.v[k] = StoreAs<T>::from(bi);
      }
      store_vec(pv + j, pp);
      if (f.momentum) store_vec(bv + j, bp);
      if (f.unscale) store_vec(gv + j, gp);
    }
    done = nvec * V;
  }
  for (int64_t i = done + threadIdx.x; i < len; i += Threads)
    sgd_scalar_elem<T>(f, s, first, p, g, buf, i);
}

template <typename T>
__global__ void __launch_bounds__(kSgdThreads)
sgd_kernel(const int64_t* __restrict__ meta, int64_t n, SgdHyper h, SgdFlags f, StepControl c,
           long long* skipped, unsigned int* counters) {
  __shared__ SgdScalars s_sh;
  __shared__ SgdTile tile_sh;
  __shared__ bool skip_sh;
  __shared__ bool first_sh;
  if (threadIdx.x == 0) {
    const StepDecision d = step_decide(c);
    skip_sh = d.skip;
    if (d.skip && blockIdx.x == 0 && skipped) ++*skipped;
    if (!d.skip) {
      const SgdTile tile = find_sgd_tile(meta, n, blockIdx.x);
      tile_sh = tile;
      const int32_t* flag = reinterpret_cast<const int32_t*>(meta[3 * n + tile.tensor]);
      first_sh = f.momentum && flag != nullptr && *flag != 0;
      s_sh = sgd_scalars<T>(h, d);
    }
  }
  __syncthreads();
  if (skip_sh) return;
  const SgdTile tile = tile_sh;
  const bool first = first_sh;
  const SgdScalars s = s_sh;
  sgd_tile_elements<T, kSgdThreads>(meta, n, f, s, first, tile);

  // The block that completes a first-step tensor's last tile clears its flag (every block
  // of the tensor read the flag before counting itself done).
  if (!first) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t t = tile.tensor;
    const int64_t tiles = meta[5 * n + t + 1] - meta[5 * n + t];
    __threadfence();
    const unsigned int prev = atomicAdd(&counters[t], 1u);
    if (prev == (unsigned int)(tiles - 1)) {
      counters[t] = 0;
      *reinterpret_cast<int32_t*>(meta[3 * n + t]) = 0;
    }
  }
}

}  // namespace

size_t sgd_workspace_bytes(int64_t n_tensors) {
  return (size_t)(n_tensors > 0 ? n_tensors : 1) * sizeof(unsigned int);
}

void sgd_step(const SgdDeviceList& list, DType dt, const SgdHyper& hyper,
              const SgdFlags& flags, const StepControl& control, long long* skipped_counter,
              void* workspace, int device, intptr_t stream) {
  if (list.n == 0 || list.n_tiles == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  auto* counters = static_cast<unsigned int*>(workspace);
  GF_DISPATCH_DTYPE(dt, sgd_kernel<scalar_t><<<(unsigned int)list.n_tiles, kSgdThreads, 0, st>>>(
      list.meta, list.n, hyper, flags, control, skipped_counter, counters));
  check(cudaGetLastError(), "sgd_kernel launch");
}

}  // namespace gradfast::cuda
