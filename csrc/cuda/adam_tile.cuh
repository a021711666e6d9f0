// The device side of the fused Adam update of one tile (adam_cuda.h describes the table and
// the step-count protocol), shared by the one-block-per-tile kernel (multi_adam.cu) and the
// one-launch clip + Adam kernel (clip_adam.cu), so both run the same per-element code.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../gradfast/adam_math.h"
#include "adam_cuda.h"
#include "vec_io.cuh"

namespace gradfast::cuda::adam_detail {

struct AdamTile {
  int64_t tensor;
  int64_t start;  // first element of the tile
  int64_t len;    // elements in the tile (0 for an empty tensor)
};

__device__ __forceinline__ AdamTile find_tile(const int64_t* meta, int64_t n, int64_t tile) {
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

// The elements of one tile, by the Threads threads of the block (each element is read and
// written by one thread only; which thread does not change any value).
template <typename T, int Threads>
__device__ __forceinline__ void adam_tile_elements(const int64_t* meta, int64_t n,
                                                   const AdamFlags& f, const AdamScalars& s,
                                                   const AdamTile& tile) {
  using M = math_t<T>;
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
    for (int64_t j = threadIdx.x; j < nvec; j += Threads) {
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
  for (int64_t i = done + threadIdx.x; i < len; i += Threads)
    adam_scalar_elem<T>(f, s, p, g, m, v, vmax, i);
}

// Thread 0 only, after a barrier that follows the tile's element updates: counts the tile
// as done, and the block that completes the tensor's last tile writes the incremented step
// count `new_step` (read as old + 1 before the tile started) and zeroes the counter.
__device__ __forceinline__ void adam_tile_done(const int64_t* meta, int64_t n, int64_t t,
                                               float new_step, unsigned int* counters) {
  const int64_t tiles = meta[7 * n + t + 1] - meta[7 * n + t];
  __threadfence();
  const unsigned int prev = atomicAdd(&counters[t], 1u);
  if (prev == (unsigned int)(tiles - 1)) {
    counters[t] = 0;
    *reinterpret_cast<float*>(meta[5 * n + t]) = new_step;
  }
}

}  // namespace gradfast::cuda::adam_detail
