// What cudasim's launch code (runtime.cpp) and its block scheduler (block.cpp) share: one
// launch's state, run as blocks on host threads.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "cuda_runtime.h"

namespace gfsim {

// Reports a misuse a GPU would punish (a wrong result, a hang or a launch error), then
// aborts: the message names the block and thread (runtime.cpp).
[[noreturn]] void fail(const char* fmt, ...);

// One launch. Its blocks are taken in order by the host threads that run them.
struct Grid {
  dim3 grid_dim, block_dim;
  uint64_t n_blocks = 0;
  bool cooperative = false;
  ThreadBody body = nullptr;  // one CUDA thread's work
  void* body_ctx = nullptr;
  std::atomic<uint64_t> next{0};  // the next block to run
  std::mutex mu;                  // the grid barrier and the count of finished blocks
  std::condition_variable cv;
  uint64_t arrived = 0, finished = 0;
  unsigned gen = 0;
};

// The grid barrier of a cooperative launch, entered by the last thread of each block to
// arrive (runtime.cpp).
void grid_wait(Grid& g);

// Runs blocks of `g` on the calling host thread until none are left (block.cpp).
void run_blocks(Grid& g);

// Whether the calling host thread is running a block (block.cpp).
bool in_kernel();

}  // namespace gfsim
