// cudasim's runtime: simulated devices, launches, and the fiber scheduler that runs the
// CUDA threads of one block (see include/cuda_runtime.h for the model).
#include <sys/mman.h>
#include <unistd.h>

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
#include "cooperative_groups.h"
#include "fiber.h"

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
constexpr size_t kStackBytes = 256 << 10;  // per CUDA thread, the lowest page a guard

std::atomic<uint64_t> launches{0};  // kernels started, for the tests' launch counts

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

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

// ---- one grid ---------------------------------------------------------------------------
struct Grid {
  uint64_t n_blocks;
  bool cooperative;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t arrived = 0, finished = 0;
  unsigned gen = 0;
};

// Blocks of a cooperative grid at its barrier (called by the last thread of each block to
// arrive). A block that finished without arriving would leave the others waiting forever.
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

// ---- one block: its CUDA threads as fibers ----------------------------------------------
enum class BarrierKind { Block, Grid };

// Where a barrier or warp operation is in the source. Optimised code may hold several
// copies of one call, so the source line, not the code address, identifies it.
struct Site {
  const char* file = nullptr;
  int line = 0;
  bool operator!=(const Site& o) const {
    return line != o.line || (file != o.file && std::strcmp(file, o.file) != 0);
  }
};

struct Barrier {
  int arrived = 0;
  unsigned gen = 0;
  Site site;
  BarrierKind kind = BarrierKind::Block;
};

struct Warp {
  int live = 0, exited = 0, arrived = 0;
  unsigned gen = 0;
  Site site;
  uint64_t slots[32], snap[32];
};

struct Fiber {
  Context ctx;
  bool done;
};

struct Block {
  ThreadBody body;
  void* body_ctx;
  Grid* grid;
  int n_threads;
  int live;
  int current;
  uint64_t progress;  // bumped by every arrival, release and exit (deadlock detection)
  Context sched;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier bar;
};

thread_local Block* tl_block = nullptr;

Block& block() {
  if (tl_block == nullptr) fail("a device function was called outside a kernel");
  return *tl_block;
}

void set_thread_idx(int i) {
  threadIdx.x = (unsigned)i % blockDim.x;
  threadIdx.y = ((unsigned)i / blockDim.x) % blockDim.y;
  threadIdx.z = (unsigned)i / (blockDim.x * blockDim.y);
}

void yield() {
  Block& b = block();
  context_switch(b.fibers[b.current].ctx, b.sched);
}

void release_barrier(Block& b) {
  if (b.bar.kind == BarrierKind::Grid) grid_wait(*b.grid);
  b.bar.arrived = 0;
  ++b.bar.gen;
  ++b.progress;
}

void barrier(BarrierKind kind, Site site) {
  Block& b = block();
  Barrier& bar = b.bar;
  if (bar.arrived == 0) {
    bar.site = site;
    bar.kind = kind;
  } else if (bar.site != site || bar.kind != kind) {
    fail("threads of one block wait at different barriers (%s:%d and %s:%d): a barrier in "
         "divergent code", bar.site.file, bar.site.line, site.file, site.line);
  }
  const unsigned gen = bar.gen;
  ++bar.arrived;
  ++b.progress;
  if (bar.arrived == b.live) {
    release_barrier(b);
    return;
  }
  while (bar.gen == gen) yield();
}

void fiber_main() {
  Block& b = block();
  b.body(b.body_ctx);
  // This CUDA thread has exited: it no longer counts for barriers (as on sm_70+), but a
  // warp operation naming it can never complete.
  const int i = b.current;
  b.fibers[i].done = true;
  --b.live;
  ++b.progress;
  Warp& w = b.warps[i / 32];
  --w.live;
  ++w.exited;
  if (w.arrived > 0) fail("a thread exited while its warp waits in a full-mask warp operation");
  if (b.bar.arrived > 0) {
    if (b.bar.kind == BarrierKind::Grid)
      fail("a thread exited while its block waits at the grid barrier");
    if (b.bar.arrived == b.live) release_barrier(b);
  }
  context_switch(b.fibers[i].ctx, b.sched);
  fail("a finished thread was resumed");
}

struct Stacks {
  char* base = nullptr;
  size_t count = 0;
  ~Stacks() {
    if (base) munmap(base, count * kStackBytes);
  }
  char* get(int i, int n) {
    if ((size_t)n > count) {
      if (base) munmap(base, count * kStackBytes);
      void* m = mmap(nullptr, (size_t)n * kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) fail("cannot map fiber stacks");
      base = static_cast<char*>(m);
      count = (size_t)n;
      const size_t page = (size_t)sysconf(_SC_PAGESIZE);
      for (int k = 0; k < n; ++k) mprotect(base + (size_t)k * kStackBytes, page, PROT_NONE);
    }
    return base + (size_t)i * kStackBytes;
  }
};

// Stacks outlive the launch that mapped them: mapping, guarding and first-touching 512
// stacks per block on every launch cost more than running most kernels.
class StackPool {
 public:
  std::unique_ptr<Stacks> acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (free_.empty()) return std::make_unique<Stacks>();
    auto s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void release(std::unique_ptr<Stacks> s) {
    std::lock_guard<std::mutex> lk(mu_);
    free_.push_back(std::move(s));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Stacks>> free_;
};

StackPool& stack_pool() {
  static StackPool* pool = new StackPool();  // never destroyed: no teardown-order questions
  return *pool;
}

void run_block(Block& b, Stacks& stacks) {
  const int n = b.n_threads;
  b.fibers.assign(n, Fiber{});
  b.warps.assign((n + 31) / 32, Warp{});
  for (int i = 0; i < n; ++i) ++b.warps[i / 32].live;
  b.bar = Barrier{};
  b.live = n;
  b.progress = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    context_init(f.ctx, stacks.get(i, n), kStackBytes, fiber_main);
  }
  tl_block = &b;
  while (b.live > 0) {
    const uint64_t before = b.progress;
    for (int i = 0; i < n; ++i) {
      if (b.fibers[i].done) continue;
      b.current = i;
      set_thread_idx(i);
      context_switch(b.sched, b.fibers[i].ctx);
    }
    if (b.live > 0 && b.progress == before)
      fail("deadlock: %d threads wait and none can proceed (%d at the block barrier)", b.live,
           b.bar.arrived);
  }
  tl_block = nullptr;
}

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
  if (tl_block != nullptr) fail("kernel launch from device code");
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
  Grid grid{n_blocks, cooperative};
  std::atomic<uint64_t> next{0};
  auto worker = [&] {
    std::unique_ptr<Stacks> stacks = stack_pool().acquire();
    gridDim = grid_dim;
    blockDim = block_dim;
    Block b;
    b.body = body;
    b.body_ctx = ctx;
    b.grid = &grid;
    b.n_threads = n_threads;
    for (uint64_t k; (k = next.fetch_add(1)) < n_blocks;) {
      blockIdx.x = (unsigned)(k % grid_dim.x);
      blockIdx.y = (unsigned)((k / grid_dim.x) % grid_dim.y);
      blockIdx.z = (unsigned)(k / ((uint64_t)grid_dim.x * grid_dim.y));
      run_block(b, *stacks);
      std::lock_guard<std::mutex> lk(grid.mu);
      ++grid.finished;
      grid.cv.notify_all();
    }
    stack_pool().release(std::move(stacks));
  };
  // A cooperative grid runs every block at once (its barrier needs them all resident).
  const uint64_t n_workers = cooperative ? n_blocks : std::min<uint64_t>(n_blocks, kWorkers);
  std::vector<std::thread> threads;
  for (uint64_t w = 0; w < n_workers; ++w) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  return cudaSuccess;
}

const uint64_t* warp_exchange(unsigned mask, uint64_t bits, const char* file, int line) {
  Block& b = block();
  const int i = b.current;
  Warp& w = b.warps[i / 32];
  const int lanes = std::min(32, b.n_threads - (i / 32) * 32);
  const unsigned want = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  if ((mask & want) != want) fail("warp operation with a partial mask (unsupported)");
  if (w.exited > 0) fail("full-mask warp operation after lanes of the warp exited");
  const Site site{file, line};
  if (w.arrived == 0) {
    w.site = site;
  } else if (w.site != site) {
    fail("lanes of one warp are in different warp operations (%s:%d and %s:%d)",
         w.site.file, w.site.line, file, line);
  }
  w.slots[i % 32] = bits;
  const unsigned gen = w.gen;
  ++w.arrived;
  ++b.progress;
  if (w.arrived == w.live) {
    std::memcpy(w.snap, w.slots, sizeof w.snap);
    w.arrived = 0;
    ++w.gen;
  } else {
    while (w.gen == gen) yield();
  }
  return w.snap;
}

unsigned lane_id() { return (unsigned)(block().current % 32); }

void grid_sync(const char* file, int line) {
  Block& b = block();
  if (!b.grid->cooperative) fail("grid barrier in a kernel not launched cooperatively");
  barrier(BarrierKind::Grid, Site{file, line});
}

void syncthreads(const char* file, int line) { barrier(BarrierKind::Block, Site{file, line}); }

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
