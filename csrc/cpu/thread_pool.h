// A small persistent thread pool for the CPU kernels.
//
// Work is split into tasks whose boundaries are fixed by the data (chunks), never by the
// thread count, so results are bitwise identical for any number of threads. The pool is
// created on first use and reused: spawning threads per call would cost more than a
// 64K-element chunk takes to process.
#pragma once
#include <cstdint>
#include <functional>

namespace gradfast::cpu {

// Runs fn(task) for task in [0, n_tasks) on up to num_threads threads (the caller included).
void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn);

}  // namespace gradfast::cpu
