// Parallel loops for the CPU kernels.
//
// Work is split into tasks whose boundaries are fixed by the data (chunks), never by the
// thread count, and tasks are claimed dynamically, so results are bitwise identical for any
// number of threads and either back end.
//
// Two back ends run the tasks:
//  - "openmp": the OpenMP runtime already loaded in the process (torch's libgomp), found at
//    run time by symbol lookup (no link-time dependency, no torch header). torch's
//    intra-op threads spin for a while after every parallel op; a second pool would then
//    share the cores with those spinning threads (measured: the fused Adam pass ~1 ms
//    slower on a 14.5M-parameter model, 2 cores). Joining torch's team avoids that and its
//    wake-up latency.
//  - "pool": a small persistent pool of our own, when no OpenMP runtime is loaded (or when
//    asked for by GRADFAST_CPU_BACKEND=pool or set_backend).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace gradfast::cpu {

// Runs fn(task) for task in [0, n_tasks) on up to num_threads threads (the caller included).
void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn);

// The fewest elements worth giving to one more thread with the back end in use.
int64_t min_elems_per_thread();

// The back end in use: "openmp" or "pool".
std::string parallel_backend();

// Selects "openmp", "pool" or "auto" (openmp when a runtime is loaded, else pool); returns
// the back end now in use. Throws std::invalid_argument for another name.
std::string set_parallel_backend(const std::string& name);

}  // namespace gradfast::cpu
