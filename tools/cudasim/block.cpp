// cudasim's block scheduler: the CUDA threads of one block as fibers on one host thread,
// switched only at barriers and warp operations (see include/cuda_runtime.h for the model).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "block.h"
#include "cooperative_groups.h"
#include "fiber.h"

namespace gfsim {
namespace {

constexpr size_t kStackBytes = 256 << 10;  // per CUDA thread, the lowest page a guard

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
  b.grid->body(b.grid->body_ctx);
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

}  // namespace

bool in_kernel() { return tl_block != nullptr; }

void run_blocks(Grid& g) {
  std::unique_ptr<Stacks> stacks = stack_pool().acquire();
  gridDim = g.grid_dim;
  blockDim = g.block_dim;
  Block b;
  b.grid = &g;
  b.n_threads = (int)(g.block_dim.x * g.block_dim.y * g.block_dim.z);
  for (uint64_t k; (k = g.next.fetch_add(1)) < g.n_blocks;) {
    blockIdx.x = (unsigned)(k % g.grid_dim.x);
    blockIdx.y = (unsigned)((k / g.grid_dim.x) % g.grid_dim.y);
    blockIdx.z = (unsigned)(k / ((uint64_t)g.grid_dim.x * g.grid_dim.y));
    run_block(b, *stacks);
    std::lock_guard<std::mutex> lk(g.mu);
    ++g.finished;
    g.cv.notify_all();
  }
  stack_pool().release(std::move(stacks));
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
