// The fused Adam/AdamW step on CUDA: one launch per (device, dtype) group, one block per
// tile of kAdamTileElems elements, 16-byte vector loads and stores (vec_io.cuh, L2-only
// streaming) where every array of the tile is 16-byte aligned. The per-element math is
// adam_math.h's adam_element, the function the CPU loops run. See adam_cuda.h for the table
// layout and the step-count protocol.
#include <cuda_runtime.h>

#include "../gradfast/adam_math.h"
#include "adam_cuda.h"
#include "device_guard.h"
#include "vec_io.cuh"

namespace gradfast::cuda {
namespace {

constexpr int kAdamThreads = 256;

struct AdamTile {
  int64_t tensor;
  int64_t start;  // first element of the tile
  int64_t len;    // elements in the tile (0 for an empty tensor)
};

__device__ AdamTile find_tile(const int64_t* meta, int64_t n, int64_t tile) {
  const int64_t* first = meta + 7 * n;
  int64_t lo = 0, hi = n - 1;  // the last t with first[t] <= tile
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (first[mid] <= tile) lo = mid; else hi = mid - 1;
  }
  const int64_t numel = meta[6 * n + lo];
  const int64_t start = (tile - first[lo]) * kAdamTileElems;
  const int64_t left = numel - start;
  return {lo, start, left < kAdamTileElems ? (left > 0 ? left : 0) : kAdamTileElems};
}

template <typename T>
__device__ __forceinline__ void adam_scalar_elem(const AdamFlags& f, const AdamScalars& s, T* p,
                                                 T* g, T* m, T* v, T* vmax, int64_t i) {
  using M = math_t<T>;
  M pi = load_math(p[i]), gi = load_math(g[i]), mi = load_math(m[i]), vi = load_math(v[i]);
  M xi = f.amsgrad ? load_math(vmax[i]) : (M)0;
  adam_element<T>(f, s, pi, gi, mi, vi, xi);
  p[i] = StoreAs<T>::from(pi);
  m[i] = StoreAs<T>::from(mi);
  v[i] = StoreAs<T>::from(vi);
  if (f.amsgrad) vmax[i] = StoreAs<T>::from(xi);
  if (f.unscale) g[i] = StoreAs<T>::from(gi);
}

template <typename T>
__global__ void __launch_bounds__(kAdamThreads)
adam_kernel(const int64_t* __restrict__ meta, int64_t n, AdamHyper h, AdamFlags f,
            AdamControl c, long long* skipped, unsigned int* counters) {
  using M = math_t<T>;
  __shared__ AdamScalars s_sh;
  __shared__ AdamTile tile_sh;
  __shared__ bool skip_sh;
  __shared__ float step_sh;
  if (threadIdx.x == 0) {
    const AdamDecision d = adam_decide(c);
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
  const int64_t t = tile.tensor;
  T* p = reinterpret_cast<T*>(meta[t]) + tile.start;
  T* g = reinterpret_cast<T*>(meta[n + t]) + tile.start;
  T* m = reinterpret_cast<T*>(meta[2 * n + t]) + tile.start;
  T* v = reinterpret_cast<T*>(meta[3 * n + t]) + tile.start;
  T* vmax = f.amsgrad ? reinterpret_cast<T*>(meta[4 * n + t]) + tile.start : nullptr;
  const int64_t len = tile.len;

  constexpr int V = Vec16<T>::kN;
  const uintptr_t mis = (reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v) |
                         reinterpret_cast<uintptr_t>(vmax)) & 15u;
  int64_t done = 0;
  if (mis == 0) {
    const int64_t nvec = len / V;
    auto* pv = reinterpret_cast<Vec16<T>*>(p);
    auto* gv = reinterpret_cast<Vec16<T>*>(g);
    auto* mv = reinterpret_cast<Vec16<T>*>(m);
    auto* vv = reinterpret_cast<Vec16<T>*>(v);
    auto* xv = reinterpret_cast<Vec16<T>*>(vmax);
    for (int64_t j = threadIdx.x; j < nvec; j += kAdamThreads) {
      Vec16<T> pp = load_vec(pv + j), gp = load_vec(gv + j), mp = load_vec(mv + j),
               vp = load_vec(vv + j);
      Vec16<T> xp;
      if (f.amsgrad) xp = load_vec(xv + j);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        M pi = load_math(pp.v[k]), gi = load_math(gp.v[k]), mi = load_math(mp.v[k]),
          vi = load_math(vp.v[k]);
        M xi = f.amsgrad ? load_math(xp.v[k]) : (M)0;
        adam_element<T>(f, s, pi, gi, mi, vi, xi);
        pp.v[k] = StoreAs<T>::from(pi);
        gp.v[k] = StoreAs<T>::from(gi);
        mp.v[k] = StoreAs<T>::from(mi);
        vp.v[k] = StoreAs<T>::from(vi);
        if (f.amsgrad) xp.v[k] = StoreAs<T>::from(xi);
      }
      store_vec(pv + j, pp);
      store_vec(mv + j, mp);
      store_vec(vv + j, vp);
      if (f.amsgrad) store_vec(xv + j, xp);
      if (f.unscale) store_vec(gv + j, gp);
    }
    done = nvec * V;
  }
  for (int64_t i = done + threadIdx.x; i < len; i += kAdamThreads)
    adam_scalar_elem<T>(f, s, p, g, m, v, vmax, i);

  // The block that completes the tensor's last tile writes the incremented step count.
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t tiles = meta[7 * n + t + 1] - meta[7 * n + t];
    __threadfence();
    const unsigned int prev = atomicAdd(&counters[t], 1u);
    if (prev == (unsigned int)(tiles - 1)) {
      counters[t] = 0;
      *reinterpret_cast<float*>(meta[5 * n + t]) = step_sh;
    }
  }
}

}  // namespace

size_t adam_workspace_bytes(int64_t n_tensors) {
  return (size_t)(n_tensors > 0 ? n_tensors : 1) * sizeof(unsigned int);
}

void adam_step(const AdamDeviceList& list, DType dt, const AdamHyper& hyper,
               const AdamFlags& flags, const AdamControl& control, long long* skipped_counter,
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
