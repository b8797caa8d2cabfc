// Shared by the kernel sources (see common.cc).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <type_traits>

namespace kernels {

// Split [0, count) into contiguous ranges, one per pool thread but none under a minimum of
// work (waking a thread costs more), and run fn(begin, end) on each; returns when all are done.
void ParallelFor(int64_t count, int64_t work_per_item, const std::function<void(int64_t, int64_t)> &fn);

// Adds to *sum and *dot the sums of a[i] - shift and of (a[i] - shift) * (b[i] - shift) over
// `count` values, in double (eight lanes, then in order). A channel's moments pass x for both
// and the channel's first value as shift (its variance then does not cancel); a gradient's
// sums pass the gradient and x, shift 0.
void ShiftedSumAndDot(const float *a, const float *b, int64_t count, float shift, double *sum, double *dot);

// The planes of one channel of an NCHW tensor: image b's plane starts at planes[b]. A
// channel c of a C-channel tensor, or of a concatenation's part (the second half of a
// 2C-channel tensor: channel C + c of 2C).
template <class T>
struct ChannelPlanes {
  T *first;        // image 0's plane; null for "no tensor"
  int64_t stride;  // from one image's plane to the next: channels * plane
  ChannelPlanes(T *base, int64_t channels, int64_t plane, int64_t c)
      : first(base == nullptr ? nullptr : base + c * plane), stride(channels * plane) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U *, T *>>>  // a read-only view of writable planes
  ChannelPlanes(const ChannelPlanes<U> &other) : first(other.first), stride(other.stride) {}  // NOLINT: implicit
  T *operator[](int64_t b) const { return first + b * stride; }
  explicit operator bool() const { return first != nullptr; }
};

// The mean and biased variance of a channel of n planes, in double, from sums shifted by the
// channel's first value (no cancellation where |mean| >> std).
void ChannelMoments(ChannelPlanes<const float> x, int64_t n, int64_t plane, double *mean, double *variance);

inline void ChannelMoments(const float *x, int64_t n, int64_t channels, int64_t plane, int64_t c, double *mean,
                           double *variance) {
  ChannelMoments(ChannelPlanes<const float>(x, channels, plane, c), n, plane, mean, variance);
}

// For a backward, the sums over a channel of a gradient g: adds those of g and of g * x (x may
// be absent: the dot is then of no use) over the channel's n planes to *sum and *dot. g is
// grad_y, or, with relu_output (the output of a ReLU after the operator), grad_y where
// relu_output > 0, else 0, written into grad_x, where the caller goes on in place.
void ChannelGradientSums(ChannelPlanes<const float> grad_y, ChannelPlanes<const float> relu_output,
                         ChannelPlanes<const float> x, int64_t n, int64_t plane, ChannelPlanes<float> grad_x,
                         double *sum, double *dot);

inline void ChannelGradientSums(const float *grad_y, const float *relu_output, const float *x, int64_t n,
                                int64_t channels, int64_t plane, int64_t c, float *grad_x, double *sum, double *dot) {
  ChannelGradientSums(ChannelPlanes<const float>(grad_y, channels, plane, c),
                      ChannelPlanes<const float>(relu_output, channels, plane, c),
                      ChannelPlanes<const float>(x, channels, plane, c), n, plane,
                      ChannelPlanes<float>(grad_x, channels, plane, c), sum, dot);
}

// A uint8 activation's fake-quant (src/quant/primitives.py: fake_quant_activation), in the
// framework's float32 operations and order: clamp to [(0 - zp) * s, (255 - zp) * s], then
// floor(v / s + 0.5) * s. The kernels are compiled without fused multiply-adds, so the
// results are the framework's bit for bit.
struct ActivationQuant {
  float scale, low, high;
  ActivationQuant(float scale, float zero_point)
      : scale(scale), low((0.0f - zero_point) * scale), high((255.0f - zero_point) * scale) {}
  float operator()(float x) const { return std::floor(std::min(std::max(x, low), high) / scale + 0.5f) * scale; }
  bool Passes(float x) const { return x >= low && x <= high; }  // where the gradient goes straight through
};

// The number of values of a tensor of this shape (1 for a 0-d tensor).
inline int64_t Elements(int ndim, const int64_t *shape) {
  int64_t count = 1;
  for (int i = 0; i < ndim; ++i) count *= shape[i];
  return count;
}

inline bool IsFloat32(const char *dtype) {
  return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0;
}

inline bool AllFloat32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (!IsFloat32(dtypes[i])) return false;
  }
  return true;
}

// Whether the tensors at these parameter positions each hold `count` values.
inline bool SizesAre(std::initializer_list<int> positions, int64_t count, int *ndims, int64_t **shapes) {
  for (int i : positions) {
    if (Elements(ndims[i], shapes[i]) != count) return false;
  }
  return true;
}

// An NCHW shape as (N, C, H * W); false unless 4-d and non-empty.
inline bool ChannelShape(int ndim, const int64_t *shape, int64_t *n, int64_t *c, int64_t *plane) {
  if (ndim != 4) return false;
  *n = shape[0];
  *c = shape[1];
  *plane = shape[2] * shape[3];
  return *n * *plane > 0;
}

}  // namespace kernels
