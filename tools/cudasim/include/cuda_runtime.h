// cudasim: just enough of the CUDA runtime and device language to run gradfast's kernels
// (csrc/cuda) on the CPU, for tests on machines without a GPU. Not a general emulator.
//
// Model. A launch runs its blocks on host threads (all at once for a cooperative launch,
// whose grid barrier needs every block resident); inside a block every CUDA thread is a
// fiber with its own stack. Fibers switch only at __syncthreads, warp shuffles/ballots and
// grid barriers, so the per-thread code runs unchanged, one CUDA thread at a time. Blocks
// really run in parallel, so the cross-block protocols (last-arrival counters, fences,
// atomics, the grid barrier) run against real concurrency. __shared__ variables become
// thread_local statics: one copy per host thread, i.e. per running block.
//
// What it checks beyond the results: barriers reached by part of a block or at different
// call sites, full-mask warp operations after some lanes exited, deadlocks, launch
// configurations a GPU rejects (empty grids, oversized blocks, cooperative grids larger than
// the device holds), grid barriers outside a cooperative launch.
//
// What it cannot check: GPU memory ordering (the host's is stronger), timing, register
// and shared-memory limits, PTX. Devices are simulated with the sizes in runtime.cpp.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define GRADFAST_CUDA_SIM 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
struct alignas(16) uint4 { unsigned x, y, z, w; };

// The running fiber's coordinates (set by the scheduler before it resumes a fiber).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// ---- runtime API ----------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNotSupported = 801,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
typedef cudaError_t cudaError;
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
};

const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

namespace gfsim {

// Runs body() once per CUDA thread of the grid; returns the launch's error.
typedef void (*ThreadBody)(void* ctx);
cudaError_t run_grid(dim3 grid, dim3 block, bool cooperative, ThreadBody body, void* ctx);
void set_launch_error(cudaError_t err);
int occupancy(int block_threads);  // resident blocks per multiprocessor

// Every CUDA thread gets its own copy of the kernel's parameters, as on a GPU.
template <typename Tuple, typename... P>
struct Invocation {
  void (*kernel)(P...);
  const Tuple* args;
  static void run(void* self) {
    auto* inv = static_cast<Invocation*>(self);
    Tuple copy = *inv->args;
    std::apply(inv->kernel, copy);
  }
};

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
};
inline LaunchConfig config(dim3 grid, dim3 block, size_t shared_bytes = 0,
                           cudaStream_t = nullptr) {
  return {grid, block, shared_bytes};
}

// kernel<<<grid, block, shared, stream>>>(args...), as rewritten by rewrite_launches.py.
// Runs synchronously: the stream's order is trivially kept.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), LaunchConfig cfg, A&&... args) {
  // No kernel of gradfast's uses dynamic shared memory: refuse it rather than ignore it.
  if (cfg.shared_bytes != 0) return set_launch_error(cudaErrorInvalidValue);
  using Tuple = std::tuple<std::decay_t<P>...>;
  const Tuple params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  Invocation<Tuple, P...> inv{kernel, &params};
  set_launch_error(run_grid(cfg.grid, cfg.block, false, &Invocation<Tuple, P...>::run, &inv));
}

template <typename... P, size_t... I>
std::tuple<std::decay_t<P>...> unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<std::decay_t<P>...>(*static_cast<std::decay_t<P>*>(args[I])...);
}

}  // namespace gfsim

template <typename F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F, int block_threads,
                                                          size_t) {
  *blocks = gfsim::occupancy(block_threads);
  return cudaSuccess;
}

// The typed form only (rewrite_launches.py drops the reinterpret_cast<const void*> of the
// source): the simulator needs the kernel's parameter types to unpack `args`.
template <typename... P>
cudaError_t cudaLaunchCooperativeKernel(void (*kernel)(P...), dim3 grid, dim3 block,
                                        void** args, size_t shared_bytes, cudaStream_t) {
  if (shared_bytes != 0) return cudaErrorInvalidValue;
  using Tuple = std::tuple<std::decay_t<P>...>;
  const Tuple params = gfsim::unpack<P...>(args, std::index_sequence_for<P...>{});
  gfsim::Invocation<Tuple, P...> inv{kernel, &params};
  return gfsim::run_grid(grid, block, true, &gfsim::Invocation<Tuple, P...>::run, &inv);
}

// ---- device functions -----------------------------------------------------------------
// Barriers and warp operations carry their source line: the simulator checks that all
// threads of a block (lanes of a warp) meet at the same one.
namespace gfsim {
void syncthreads(const char* file, int line);
}  // namespace gfsim
#define __syncthreads() ::gfsim::syncthreads(__FILE__, __LINE__)
void __threadfence();

namespace gfsim {
// All lanes of the calling warp deposit `bits`; returns the 32 deposits (valid until the
// caller's next warp operation). mask must name every lane of the warp.
const uint64_t* warp_exchange(unsigned mask, uint64_t bits, const char* file, int line);
template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
unsigned lane_id();
}  // namespace gfsim

namespace gfsim {
template <typename T>
T shfl(const char* file, int line, unsigned mask, T v, int src, int width = 32) {
  const uint64_t* all = warp_exchange(mask, to_bits(v), file, line);
  const int lane = (int)lane_id();
  return from_bits<T>(all[(lane / width) * width + (src % width)]);
}
template <typename T>
T shfl_down(const char* file, int line, unsigned mask, T v, unsigned delta, int width = 32) {
  const uint64_t* all = warp_exchange(mask, to_bits(v), file, line);
  const int lane = (int)lane_id();
  // A source beyond the caller's segment of `width` lanes leaves the caller's own value.
  if ((lane % width) + (int)delta >= width) return v;
  return from_bits<T>(all[lane + (int)delta]);
}
inline unsigned ballot(const char* file, int line, unsigned mask, int pred) {
  const uint64_t* all = warp_exchange(mask, pred ? 1 : 0, file, line);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= (all[i] ? 1u : 0u) << i;
  return bits & mask;
}
}  // namespace gfsim
#define __shfl_sync(...) ::gfsim::shfl(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::gfsim::shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(...) ::gfsim::ballot(__FILE__, __LINE__, __VA_ARGS__)

inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// Loads and stores through the caches: real memory accesses that the compiler may neither
// drop nor hoist (other blocks write what __ldcg reads).
template <typename T>
T __ldcg(const T* p) {
  static_assert(std::is_trivially_copyable<T>::value, "load type");
  if constexpr (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8) {
    T v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
  } else {
    T v;
    std::memcpy(&v, (const void*)p, sizeof(T));
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return v;
  }
}
template <typename T>
T __ldg(const T* p) { return __ldcg(p); }
template <typename T>
void __stcg(T* p, T v) {
  if constexpr (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8) {
    __atomic_store(p, &v, __ATOMIC_RELAXED);
  } else {
    std::memcpy((void*)p, &v, sizeof(T));
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
  }
}

// Integer only: gradfast's kernels use no floating-point atomics (their sums would depend
// on arrival order), and the simulator refuses to compile one.
template <typename T>
T atomicAdd(T* addr, T v) {
  static_assert(std::is_integral<T>::value, "floating-point atomicAdd: not deterministic");
  return __atomic_fetch_add(addr, v, __ATOMIC_SEQ_CST);
}
template <typename T>
T atomicExch(T* addr, T v) { return __atomic_exchange_n(addr, v, __ATOMIC_SEQ_CST); }
// ((old >= limit) ? 0 : old + 1), atomically; returns old.
inline unsigned atomicInc(unsigned* addr, unsigned limit) {
  unsigned old = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(addr, &old, old >= limit ? 0u : old + 1u, false,
                                      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
