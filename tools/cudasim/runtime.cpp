// cudasim's runtime: simulated devices, launches and the runtime API (block.cpp runs the
// blocks; include/cuda_runtime.h describes the model).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime.h"
#include "block.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace gfsim {
namespace {

// ---- simulated devices ------------------------------------------------------------------
struct Device {
  int sms;
  bool cooperative;
};

// Default: devices of 1, 3 and 8 multiprocessors with cooperative launch and one of 2
// without, so a test that runs on each covers one-block grids, many blocks sharing the
// work, and the two-launch fallback. GFSIM_DEVICES="sms:coop,..." overrides.
std::vector<Device> parse_devices() {
  const char* env = std::getenv("GFSIM_DEVICES");
  const std::string spec = env && *env ? env : "1:1,3:1,8:1,2:0";
  std::vector<Device> out;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t end = std::min(spec.find(',', pos), spec.size());
    const std::string item = spec.substr(pos, end - pos);
    if (!item.empty()) {
      const size_t colon = item.find(':');
      Device d{std::max(1, std::atoi(item.substr(0, colon).c_str())), true};
      if (colon != std::string::npos) d.cooperative = std::atoi(item.c_str() + colon + 1) != 0;
      out.push_back(d);
    }
    pos = end + 1;
  }
  return out;
}

const std::vector<Device>& devices() {
  static const std::vector<Device> d = parse_devices();
  return d;
}

constexpr int kBlocksPerSm = 2;     // what the occupancy query reports for every kernel
constexpr int kWorkers = 4;         // host threads running the blocks of a normal launch

std::atomic<uint64_t> launches{0};  // kernels started, for the tests' launch counts

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

}  // namespace

[[noreturn]] void fail(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\ncudasim: %s (block %u, thread %u)\n", msg, blockIdx.x, threadIdx.x);
  std::fflush(stderr);
  std::abort();
}

// A block that finished without arriving would leave the others waiting forever.
void grid_wait(Grid& g) {
  std::unique_lock<std::mutex> lk(g.mu);
  const unsigned gen = g.gen;
  if (++g.arrived == g.n_blocks) {
    g.arrived = 0;
    ++g.gen;
    g.cv.notify_all();
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (g.gen == gen) {
    if (g.finished > 0) fail("a block finished while others wait at the grid barrier");
    if (g.cv.wait_until(lk, deadline) == std::cv_status::timeout && g.gen == gen)
      fail("grid barrier: timed out waiting for the other blocks");
  }
}

namespace {

bool valid_config(dim3 grid, dim3 block) {
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= (unsigned)INT_MAX &&
         grid.y <= 65535 && grid.z <= 65535 && threads >= 1 && threads <= 1024 &&
         block.x <= 1024 && block.y <= 1024 && block.z <= 64;
}

const char* error_name(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
  }
  return "unknown error";
}

cudaError_t record(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
  return err;
}

}  // namespace

int occupancy(int block_threads) {
  return std::max(1, std::min(kBlocksPerSm, 2048 / std::max(block_threads, 1)));
}

void set_launch_error(cudaError_t err) { record(err); }

cudaError_t run_grid(dim3 grid_dim, dim3 block_dim, bool cooperative, ThreadBody body,
                     void* ctx) {
  if (in_kernel()) fail("kernel launch from device code");
  if (!valid_config(grid_dim, block_dim)) return cudaErrorInvalidConfiguration;
  const Device& dev = devices()[current_device];
  const uint64_t n_blocks = (uint64_t)grid_dim.x * grid_dim.y * grid_dim.z;
  const int n_threads = (int)(block_dim.x * block_dim.y * block_dim.z);
  if (cooperative) {
    if (!dev.cooperative) return cudaErrorNotSupported;
    if (n_blocks > (uint64_t)dev.sms * occupancy(n_threads))
      return cudaErrorCooperativeLaunchTooLarge;
  }
  launches.fetch_add(1);
  Grid grid;
  grid.grid_dim = grid_dim;
  grid.block_dim = block_dim;
  grid.n_blocks = n_blocks;
  grid.cooperative = cooperative;
  grid.body = body;
  grid.body_ctx = ctx;
  // A cooperative grid runs every block at once (its barrier needs them all resident).
  const uint64_t n_workers = cooperative ? n_blocks : std::min<uint64_t>(n_blocks, kWorkers);
  std::vector<std::thread> threads;
  for (uint64_t w = 0; w < n_workers; ++w) threads.emplace_back([&grid] { run_blocks(grid); });
  for (auto& t : threads) t.join();
  return cudaSuccess;
}

}  // namespace gfsim

void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

const char* cudaGetErrorString(cudaError_t err) { return gfsim::error_name(err); }

cudaError_t cudaGetLastError() {
  const cudaError_t err = gfsim::last_error;
  gfsim::last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return gfsim::last_error; }

cudaError_t cudaGetDeviceCount(int* n) {
  *n = (int)gfsim::devices().size();
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = gfsim::current_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= (int)gfsim::devices().size())
    return gfsim::record(cudaErrorInvalidDevice);
  gfsim::current_device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= (int)gfsim::devices().size())
    return gfsim::record(cudaErrorInvalidDevice);
  const gfsim::Device& d = gfsim::devices()[device];
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.sms; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = d.cooperative ? 1 : 0; return cudaSuccess;
  }
  return gfsim::record(cudaErrorInvalidValue);
}

// Kernels launched so far in this process (read by the tests through ctypes).
extern "C" __attribute__((visibility("default"))) uint64_t gfsim_launches() {
  return gfsim::launches.load();
}
