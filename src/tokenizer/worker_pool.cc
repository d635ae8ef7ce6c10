// run_on_workers: a lazily grown set of detached-at-exit worker threads fed from one task queue.
#include "tokenizer/worker_pool.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace qad::tokenizer {
namespace {

class WorkerPool {
 public:
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(size_t n, const std::function<void()>& fn) {
    if (n <= 1) {
      fn();
      return;
    }
    size_t pending = n - 1;
    std::mutex done_mu;
    std::condition_variable done_cv;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (threads_.size() < n - 1) threads_.emplace_back([this] { loop(); });
      for (size_t k = 0; k + 1 < n; ++k) {
        tasks_.push_back([&] {
          fn();
          std::lock_guard<std::mutex> l(done_mu);
          if (--pending == 0) done_cv.notify_one();
        });
      }
    }
    cv_.notify_all();
    fn();
    std::unique_lock<std::mutex> l(done_mu);
    done_cv.wait(l, [&] { return pending == 0; });
  }

 private:
  void loop() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (stop_ && tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

}  // namespace

void run_on_workers(size_t n, const std::function<void()>& fn) {
  static WorkerPool pool;
  pool.run(n, fn);
}

}  // namespace qad::tokenizer
