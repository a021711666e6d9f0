// 16-byte vector loads and stores of storage elements: the widest single global access a
// thread can issue (LDG.128 / STG.128), which memory-bound kernels need to reach full
// bandwidth. Valid only on 16-byte aligned addresses (chunk_loop.cuh peels the rest).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../gradfast/dtype.h"

namespace gradfast::cuda {

template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kN = 16 / (int)sizeof(T);  // 4 fp32, 2 fp64, 8 fp16/bf16
  T v[kN];
};
static_assert(sizeof(Vec16<float>) == 16 && sizeof(Vec16<double>) == 16 &&
              sizeof(Vec16<Half>) == 16 && sizeof(Vec16<BFloat16>) == 16,
              "a vector must be exactly one 16-byte access");

// Streaming accesses cached in L2 only (.cg): data is touched once, so it has no business in
// L1, which stays free for the small tensor-list table every chunk's lookup reads. (.cg is
// coherent at L2, so it is also right for in-place updates.)
template <typename T>
__device__ __forceinline__ Vec16<T> load_vec(const Vec16<T>* p) {
  union { uint4 u; Vec16<T> v; } r;
  r.u = __ldcg(reinterpret_cast<const uint4*>(p));
  return r.v;
}

template <typename T>
__device__ __forceinline__ void store_vec(Vec16<T>* p, const Vec16<T>& v) {
  union { uint4 u; Vec16<T> v; } r;
  r.v = v;
  __stcg(reinterpret_cast<uint4*>(p), r.u);
}

// A storage value in its math type, as load_as_float, but fp16 through the hardware
// converter (one instruction instead of the portable bit manipulation, which costs a dozen
// instructions and registers per element and starves a bandwidth-bound loop). fp16 -> fp32
// is exact, so both give the same value for every input; only a NaN's payload may differ,
// and a NaN stays a NaN.
template <typename T>
__device__ __forceinline__ math_t<T> load_math(T x) { return load_as_float(x); }
#if !defined(GRADFAST_CUDA_SIM)  // tools/cudasim runs this on the CPU: no PTX there
template <>
__device__ __forceinline__ float load_math<Half>(Half x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
#endif

}  // namespace gradfast::cuda
