// What the kernels share: the thread pool their loops run on, and the entry that sizes it.
#include "common.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// Workers that sleep between jobs. OpenMP's spinning workers would take the cores from
// MindSpore's own threads between two kernels (measured: 2-3x slower networks).
class ThreadPool {
 public:
  explicit ThreadPool(int size) : size_(size) {
    for (int i = 1; i < size; ++i) workers_.emplace_back([this, i] { Loop(i); });
  }

  // Split [0, count) into contiguous ranges, one per thread but none under kMinWork
  // multiply-adds (waking a thread costs more than that), and run fn(begin, end) on each.
  void ParallelFor(int64_t count, int64_t work_per_item, const std::function<void(int64_t, int64_t)> &fn) {
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({size_, count, count * work_per_item / kMinWork}));
    if (parts <= 1) {
      fn(0, count);
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(run_mutex_);
    std::function<void(int)> job = [&](int index) {
      if (index < parts) fn(count * index / parts, count * (index + 1) / parts);
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      pending_ = size_ - 1;
      ++generation_;
    }
    wake_.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  void Loop(int index) {
    int64_t seen = 0;
    for (;;) {
      const std::function<void(int)> *job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      (*job)(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  static constexpr int64_t kMinWork = 1 << 16;
  int size_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)> *job_ = nullptr;
  int64_t generation_ = 0;
  int pending_ = 0;
};

ThreadPool *g_pool = nullptr;  // never destroyed: its sleeping workers end with the process

}  // namespace

namespace kernels {

void ParallelFor(int64_t count, int64_t work_per_item, const std::function<void(int64_t, int64_t)> &fn) {
  if (g_pool == nullptr) g_pool = new ThreadPool(1);
  g_pool->ParallelFor(count, work_per_item, fn);
}

}  // namespace kernels

extern "C" void KernelsSetThreads(int threads) {
  if (g_pool == nullptr) g_pool = new ThreadPool(threads > 0 ? threads : 1);
}
