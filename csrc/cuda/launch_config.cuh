// Host-side launch sizing for persistent multi-tensor kernels, with every device query
// cached: a training step calls these entry points a few times per step, often for models
// so small that host overhead is the whole cost, so no call may ask the driver for device
// properties again (cudaGetDeviceProperties alone costs tens of microseconds).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "device_guard.h"

namespace gradfast::cuda {

// Devices beyond this are still served, just queried on each call.
constexpr int kMaxCachedDevices = 64;

// Multiprocessors of `device`, asked once per device.
inline int sm_count(int device) {
  static std::atomic<int> cache[kMaxCachedDevices];  // 0 = not asked yet (static: zeroed)
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  v = std::max(v, 1);
  if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

// Whether `device` can launch cooperative kernels (cudaDevAttrCooperativeLaunch), asked once
// per device.
inline bool cooperative_launch_supported(int device) {
  static std::atomic<int> cache[kMaxCachedDevices];  // 0 = not asked, 1 = no, 2 = yes
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v == 2;
  }
  int v = 0;
  check(cudaDeviceGetAttribute(&v, cudaDevAttrCooperativeLaunch, device),
        "cudaDeviceGetAttribute(CooperativeLaunch)");
  if (cacheable) cache[device].store(v ? 2 : 1, std::memory_order_relaxed);
  return v != 0;
}

// Blocks of `Kernel` (launched with Block threads, no dynamic shared memory) resident on one
// multiprocessor at once, asked once per (kernel, device): each kernel instantiation gets its
// own cache through the template argument. `device` must be current (DeviceGuard).
template <auto Kernel, int Block>
int resident_blocks(int device) {
  static std::atomic<int> cache[kMaxCachedDevices];
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, Kernel, Block, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  v = std::max(v, 1);
  if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

// Grid of a persistent kernel over `work` items: one full wave of resident blocks, never more
// blocks than items, and at least one (kernels that must run even with no items).
template <auto Kernel, int Block>
unsigned persistent_grid(int64_t work, int device) {
  const int64_t wave = (int64_t)sm_count(device) * resident_blocks<Kernel, Block>(device);
  return (unsigned)std::max<int64_t>(1, std::min(work, wave));
}

}  // namespace gradfast::cuda
