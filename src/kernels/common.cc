// What the kernels share: the thread pool their loops run on, the entry that sizes it, and the
// per-channel sums in double (forward moments, backward gradient sums).
#include "common.h"

#include <algorithm>
#include <cstring>
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

namespace {

typedef float Floats4 __attribute__((vector_size(16)));
typedef double Doubles4 __attribute__((vector_size(32)));

}  // namespace

void ShiftedSumAndDot(const float *a, const float *b, int64_t count, float shift, double *sum, double *dot) {
  Doubles4 s0 = {0, 0, 0, 0}, s1 = s0, d0 = s0, d1 = s0;
  const Doubles4 centre = {shift, shift, shift, shift};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    Floats4 a0, a1, b0, b1;
    std::memcpy(&a0, a + i, sizeof a0);
    std::memcpy(&a1, a + i + 4, sizeof a1);
    std::memcpy(&b0, b + i, sizeof b0);
    std::memcpy(&b1, b + i + 4, sizeof b1);
    const Doubles4 x0 = __builtin_convertvector(a0, Doubles4) - centre;
    const Doubles4 x1 = __builtin_convertvector(a1, Doubles4) - centre;
    s0 += x0;
    s1 += x1;
    d0 += x0 * (__builtin_convertvector(b0, Doubles4) - centre);
    d1 += x1 * (__builtin_convertvector(b1, Doubles4) - centre);
  }
  double s = 0.0, d = 0.0;
  for (int k = 0; k < 4; ++k) {
    s += s0[k] + s1[k];
    d += d0[k] + d1[k];
  }
  for (; i < count; ++i) {
    const double x = static_cast<double>(a[i]) - shift;
    s += x;
    d += x * (static_cast<double>(b[i]) - shift);
  }
  *sum += s;
  *dot += d;
}

void ChannelMoments(ChannelPlanes<const float> x, int64_t n, int64_t plane, double *mean, double *variance) {
  const float origin = x[0][0];
  double sum = 0.0, squares = 0.0;
  for (int64_t b = 0; b < n; ++b) ShiftedSumAndDot(x[b], x[b], plane, origin, &sum, &squares);
  const double count = static_cast<double>(n * plane), shifted_mean = sum / count;
  *mean = origin + shifted_mean;
  *variance = std::max(squares / count - shifted_mean * shifted_mean, 0.0);
}

void ChannelGradientSums(ChannelPlanes<const float> grad_y, ChannelPlanes<const float> relu_output,
                         ChannelPlanes<const float> x, int64_t n, int64_t plane, ChannelPlanes<float> grad_x,
                         double *sum, double *dot) {
  for (int64_t b = 0; b < n; ++b) {
    const float *g = grad_y[b];
    if (relu_output) {
      float *masked = grad_x[b];
      const float *y = relu_output[b];
      for (int64_t i = 0; i < plane; ++i) masked[i] = y[i] > 0.0f ? g[i] : 0.0f;
      g = masked;
    }
    ShiftedSumAndDot(g, x ? x[b] : g, plane, 0.0f, sum, dot);
  }
}

void ParallelFor(int64_t count, int64_t work_per_item, const std::function<void(int64_t, int64_t)> &fn) {
  if (g_pool == nullptr) g_pool = new ThreadPool(1);
  g_pool->ParallelFor(count, work_per_item, fn);
}

}  // namespace kernels

extern "C" void KernelsSetThreads(int threads) {
  if (g_pool == nullptr) g_pool = new ThreadPool(threads > 0 ? threads : 1);
}
