// In-place multi-tensor element-wise ops on the GPU (clip scaling, value clamping): one
// launch each for any number of tensors, a persistent grid walking the chunks, 16-byte
// vector accesses. The per-element math is the CPU's (load_as_float, StoreAs), so both back
// ends store the same bits.
#include <cuda_runtime.h>

#include <stdexcept>

#include "chunk_loop.cuh"
#include "cuda_ops.h"
#include "device_guard.h"

namespace gradfast::cuda {
namespace {

constexpr int kEwBlock = 512;
constexpr int kEwIlp = 4;
// At most 64 registers, so two blocks (2 x 16 warps x 4 x 16 B in flight) share each SM:
// the bf16 clamp otherwise takes 68 and a whole SM runs one block, ~15% below bandwidth.
constexpr int kEwMinBlocks = 2;

template <typename T>
__global__ void __launch_bounds__(kEwBlock, kEwMinBlocks)
    multi_scale_kernel(MetaTable table, int64_t n_chunks, const math_t<T>* coef) {
  using A = math_t<T>;
  // coef is usually written by the norm kernel just before on the same stream: read it once
  // per block, on the device, so clipping never needs a host sync.
  __shared__ A s_coef;
  if (threadIdx.x == 0) s_coef = *coef;
  __syncthreads();
  const A c = s_coef;
  // x * 1 == x for every value (NaN stays NaN), so an inactive clip (coef clamped to 1)
  // moves no memory at all.
  if (c == (A)1) return;
  for_each_chunk(table, n_chunks, [&](int64_t, const ChunkRef& ch) {
    T* base = static_cast<T*>(table.ptr(ch.tensor)) + ch.start;
    update_chunk<T, kEwBlock, kEwIlp>(base, ch.len,
                                     [c](T x) { return StoreAs<T>::from(load_math(x) * c); });
  });
}

template <typename T>
__global__ void __launch_bounds__(kEwBlock, kEwMinBlocks)
    multi_clamp_kernel(MetaTable table, int64_t n_chunks, math_t<T> lo, math_t<T> hi) {
  using A = math_t<T>;
  const T lo_s = StoreAs<T>::from(lo), hi_s = StoreAs<T>::from(hi);
  for_each_chunk(table, n_chunks, [&](int64_t, const ChunkRef& ch) {
    T* base = static_cast<T*>(table.ptr(ch.tensor)) + ch.start;
    update_chunk<T, kEwBlock, kEwIlp>(base, ch.len, [lo, hi, lo_s, hi_s](T x) {
      const A v = load_math(x);
      // torch's clamp_min(lo) then clamp_max(hi), as on the CPU: with lo > hi (a negative
      // clip value) everything becomes hi. NaN fails both and keeps its exact bits, as does
      // any value inside the range (it would round-trip exactly anyway).
      return v < lo ? (lo > hi ? hi_s : lo_s) : (v > hi ? hi_s : x);
    });
  });
}

void check_list(const DeviceList& list, DType dt, const char* what) {
  if (list.n < 0 || list.n_chunks < 0 || (list.n_chunks > 0 && list.meta == nullptr) ||
      (int)dt < 0 || (int)dt > (int)DType::BFloat16)
    throw std::invalid_argument(std::string("gradfast ") + what + ": bad arguments");
}

template <typename T>
void launch_scale(const DeviceList& list, const void* coef, int device, cudaStream_t stream) {
  constexpr auto kernel = multi_scale_kernel<T>;
  const unsigned grid = persistent_grid<kernel, kEwBlock>(list.n_chunks, device);
  kernel<<<grid, kEwBlock, 0, stream>>>(MetaTable{list.meta, list.n}, list.n_chunks,
                                        static_cast<const math_t<T>*>(coef));
  check(cudaGetLastError(), "multi_scale launch");
}

template <typename T>
void launch_clamp(const DeviceList& list, double lo, double hi, int device, cudaStream_t stream) {
  constexpr auto kernel = multi_clamp_kernel<T>;
  const unsigned grid = persistent_grid<kernel, kEwBlock>(list.n_chunks, device);
  kernel<<<grid, kEwBlock, 0, stream>>>(MetaTable{list.meta, list.n}, list.n_chunks,
                                        (math_t<T>)lo, (math_t<T>)hi);
  check(cudaGetLastError(), "multi_clamp launch");
}

}  // namespace

void multi_scale(const DeviceList& list, DType dt, const void* coef, int device, intptr_t stream) {
  check_list(list, dt, "multi_scale");
  if (coef == nullptr) throw std::invalid_argument("gradfast multi_scale: coef is required");
  if (list.n_chunks == 0) return;  // nothing to touch (launching zero blocks is an error)
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  GF_DISPATCH_DTYPE(dt, launch_scale<scalar_t>(list, coef, device, s));
}

void multi_clamp(const DeviceList& list, DType dt, double lo, double hi, int device,
                 intptr_t stream) {
  check_list(list, dt, "multi_clamp");
  if (list.n_chunks == 0) return;
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  GF_DISPATCH_DTYPE(dt, launch_clamp<scalar_t>(list, lo, hi, device, s));
}

}  // namespace gradfast::cuda
