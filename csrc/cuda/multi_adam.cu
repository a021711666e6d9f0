// The fused Adam/AdamW step on CUDA: one launch per (device, dtype) group, one block per
// tile of kAdamTileElems elements, 16-byte vector loads and stores where every array of the
// tile is 16-byte aligned. The per-element math is adam_math.h's adam_element, the function
// the CPU loops run. See adam_cuda.h for the table layout and the step-count protocol.
#include <cuda_runtime.h>

#include "../gradfast/adam_math.h"
#include "adam_cuda.h"
#include "device_guard.h"

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
  M pi = load_as_float(p[i]), gi = load_as_float(g[i]), mi = load_as_float(m[i]),
    vi = load_as_float(v[i]);
  M xi = f.amsgrad ? load_as_float(vmax[i]) : (M)0;
  adam_element<T>(f, s, pi, gi, mi, vi, xi);
  p[i] = StoreAs<T>::from(pi);
  m[i] = StoreAs<T>::from(mi);
  v[i] = StoreAs<T>::from(vi);
  if (f.amsgrad) vmax[i] = StoreAs<T>::from(xi);
  if (f.unscale) g[i] = StoreAs<T>::from(gi);
}

template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T x[kN];
};

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

  constexpr int V = Pack<T>::kN;
  const uintptr_t mis = (reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v) |
                         reinterpret_cast<uintptr_t>(vmax)) & 15u;
  int64_t done = 0;
  if (mis == 0) {
    const int64_t nvec = len / V;
    for (int64_t j = threadIdx.x; j < nvec; j += kAdamThreads) {
      Pack<T> pp = reinterpret_cast<const Pack<T>*>(p)[j];
      Pack<T> gp = reinterpret_cast<const Pack<T>*>(g)[j];
      Pack<T> mp = reinterpret_cast<const Pack<T>*>(m)[j];
      Pack<T> vp = reinterpret_cast<const Pack<T>*>(v)[j];
      Pack<T> xp;
      if (f.amsgrad) xp = reinterpret_cast<const Pack<T>*>(vmax)[j];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        M pi = load_as_float(pp.x[k]), gi = load_as_float(gp.x[k]),
          mi = load_as_float(mp.x[k]), vi = load_as_float(vp.x[k]);
        M xi = f.amsgrad ? load_as_float(xp.x[k]) : (M)0;
        adam_element<T>(f, s, pi, gi, mi, vi, xi);
        pp.x[k] = StoreAs<T>::from(pi);
        gp.x[k] = StoreAs<T>::from(gi);
        mp.x[k] = StoreAs<T>::from(mi);
        vp.x[k] = StoreAs<T>::from(vi);
        if (f.amsgrad) xp.x[k] = StoreAs<T>::from(xi);
      }
      reinterpret_cast<Pack<T>*>(p)[j] = pp;
      reinterpret_cast<Pack<T>*>(m)[j] = mp;
      reinterpret_cast<Pack<T>*>(v)[j] = vp;
      if (f.amsgrad) reinterpret_cast<Pack<T>*>(vmax)[j] = xp;
      if (f.unscale) reinterpret_cast<Pack<T>*>(g)[j] = gp;
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
