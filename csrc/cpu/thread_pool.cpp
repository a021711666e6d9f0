#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

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

}  // namespace

void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
  const int64_t threads = std::min<int64_t>(num_threads, n_tasks);
  if (threads <= 1 || in_parallel_region) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  Pool& p = pool();
  const int helpers = (int)std::min<int64_t>(threads - 1, p.size());
  in_parallel_region = true;
  p.run(n_tasks, helpers, fn);
  in_parallel_region = false;
}

}  // namespace gradfast::cpu
