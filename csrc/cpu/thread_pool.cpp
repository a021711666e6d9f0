#include "thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define GF_HAVE_DLSYM 1
#endif

namespace gradfast::cpu {
namespace {

thread_local bool in_parallel_region = false;

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return (int)threads_.size(); }

  // One job at a time; the caller participates.
  void run(int64_t n_tasks, int helpers, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> job_guard(job_mu_);
    {
      std::lock_guard<std::mutex> g(mu_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0);
      active_helpers_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work() {
    for (int64_t t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) (*fn_)(t);
  }
  void loop(int index) {
    in_parallel_region = true;  // a task never re-enters the pool
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        if (index >= active_helpers_) continue;
      }
      work();
      {
        std::lock_guard<std::mutex> g(mu_);
        --pending_;
      }
      done_cv_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_helpers_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p(std::max(1, (int)std::thread::hardware_concurrency() - 1));
  return p;
}

// The OpenMP runtime's entry point for a parallel region (libgomp's ABI, also provided by
// LLVM's libomp): fn(data) runs on every thread of a team of num_threads.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

GompParallel find_openmp() {
#ifdef GF_HAVE_DLSYM
  return reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
#else
  return nullptr;
#endif
}

enum class Backend { Auto, OpenMP, Pool };

Backend backend_from_env() {
  const char* env = std::getenv("GRADFAST_CPU_BACKEND");
  const std::string v = env ? env : "";
  if (v == "pool") return Backend::Pool;
  if (v == "openmp") return Backend::OpenMP;
  return Backend::Auto;
}

std::atomic<int> requested{-1};  // a Backend, or -1: not read from the environment yet

// The runtime is looked up on every call until found: gradfast may be imported (and a
// kernel run) before torch has loaded its OpenMP runtime.
GompParallel openmp_if_selected() {
  int r = requested.load(std::memory_order_relaxed);
  if (r < 0) {
    r = (int)backend_from_env();
    requested.store(r, std::memory_order_relaxed);
  }
  if ((Backend)r == Backend::Pool) return nullptr;
  static std::atomic<GompParallel> found{nullptr};
  GompParallel f = found.load(std::memory_order_acquire);
  if (!f) {
    f = find_openmp();
    if (f) found.store(f, std::memory_order_release);
  }
  return f;
}

struct OmpJob {
  const std::function<void(int64_t)>* fn;
  int64_t n_tasks;
  std::atomic<int64_t> next{0};
};

void omp_trampoline(void* data) {
  auto* job = static_cast<OmpJob*>(data);
  const bool outer = in_parallel_region;
  in_parallel_region = true;
  for (int64_t t = job->next.fetch_add(1); t < job->n_tasks; t = job->next.fetch_add(1)) {
    (*job->fn)(t);
  }
  in_parallel_region = outer;
}

}  // namespace

void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
  const int64_t threads = std::min<int64_t>(num_threads, n_tasks);
  if (threads <= 1 || in_parallel_region) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  if (GompParallel omp = openmp_if_selected()) {
    OmpJob job{&fn, n_tasks};
    omp(&omp_trampoline, &job, (unsigned)threads, 0);
    return;
  }
  Pool& p = pool();
  const int helpers = (int)std::min<int64_t>(threads - 1, p.size());
  in_parallel_region = true;
  p.run(n_tasks, helpers, fn);
  in_parallel_region = false;
}

int64_t min_elems_per_thread() { return openmp_if_selected() ? (1 << 15) : (1 << 18); }

std::string parallel_backend() { return openmp_if_selected() ? "openmp" : "pool"; }

std::string set_parallel_backend(const std::string& name) {
  Backend b;
  if (name == "auto") b = Backend::Auto;
  else if (name == "openmp") b = Backend::OpenMP;
  else if (name == "pool") b = Backend::Pool;
  else throw std::invalid_argument("backend must be 'auto', 'openmp' or 'pool', got '" + name + "'");
  if (b == Backend::OpenMP && !find_openmp()) {
    throw std::invalid_argument("no OpenMP runtime is loaded in this process");
  }
  requested.store((int)b, std::memory_order_relaxed);
  return parallel_backend();
}

}  // namespace gradfast::cpu
