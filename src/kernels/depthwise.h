// Depthwise convolution of one plane (one channel of one image) and of one channel's planes
// over the batch, shared by the depthwise kernels (depthwise_conv.cc) and the depthwise
// convolution with its BatchNorm (depthwise_batchnorm.cc).
//
// float32 planes, weight K x K per channel, symmetric padding K / 2, stride 1 or 2 (recovered
// from the shapes). Each plane is copied into a zeroed padded buffer first, so the inner loops
// run without bounds checks. A channel of small planes (GhostNet's last stages: 2 x 2 to 8 x 8
// at 64 px) is convolved with the batch as the innermost axis instead: a plane's loops are
// too short to vectorize, and their setup cost more than their arithmetic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

namespace kernels {
namespace depthwise {

struct Geometry {
  int64_t n, c, h, w, k, pad, stride, oh, ow, ph, pw;  // ph, pw: padded input height, width
};

inline int64_t OutSize(int64_t in, int64_t k, int64_t stride) { return (in + 2 * (k / 2) - k) / stride + 1; }

// The stride that maps an input side to an output side, or 0 if none of 1 and 2 does.
inline int64_t StrideFor(int64_t in, int64_t out, int64_t k) {
  for (int64_t s = 1; s <= 2; ++s) {
    if (OutSize(in, k, s) == out) return s;
  }
  return 0;
}

inline bool MakeGeometry(const int64_t *input, const int64_t *weight, const int64_t *output, Geometry *g) {
  g->n = input[0]; g->c = input[1]; g->h = input[2]; g->w = input[3];
  g->k = weight[2]; g->pad = g->k / 2;
  if (weight[0] != g->c || weight[1] != 1 || weight[3] != g->k || g->k % 2 == 0) return false;
  if (output[0] != g->n || output[1] != g->c) return false;
  g->oh = output[2]; g->ow = output[3];
  g->stride = StrideFor(g->h, g->oh, g->k);
  if (g->stride == 0 || StrideFor(g->w, g->ow, g->k) != g->stride) return false;
  // padded size: every tap of every output lies inside
  g->ph = (g->oh - 1) * g->stride + g->k;
  g->pw = (g->ow - 1) * g->stride + g->k;
  return true;
}

// For an operator that runs a depthwise convolution and statistics over its output: the
// geometry of the convolution of x (N, C, H, W) by weight (C, 1, K, K) into the convolution's
// output conv, and whether out fits: conv's shape, or with `concat` (a ghost module's
// concatenation) (N, 2C, H, W) at stride 1. Shapes at those parameter positions.
inline bool FusedGeometry(bool concat, int *ndims, int64_t **shapes, int x, int weight, int conv, int out,
                          Geometry *g) {
  if (ndims[x] != 4 || ndims[weight] != 4 || ndims[conv] != 4 || ndims[out] != 4) return false;
  if (!MakeGeometry(shapes[x], shapes[weight], shapes[conv], g)) return false;
  if (g->n * g->oh * g->ow <= 0) return false;  // the statistics need values
  const int64_t *o = shapes[out];
  if (!concat) return std::equal(o, o + 4, shapes[conv]);
  return g->stride == 1 && o[0] == g->n && o[1] == 2 * g->c && o[2] == g->h && o[3] == g->w;
}

// The rows and columns of an H x W plane that lie inside the PH x PW padded buffer (a
// stride-2 convolution may not reach the last ones).
inline int64_t InnerRows(const Geometry &g) { return std::min(g.h, g.ph - g.pad); }
inline int64_t InnerCols(const Geometry &g) { return std::min(g.w, g.pw - g.pad); }

// Copy one H x W plane into a zeroed PH x PW buffer at offset (pad, pad).
inline void PadPlane(const float *src, const Geometry &g, float *dst) {
  std::fill(dst, dst + g.ph * g.pw, 0.0f);
  const int64_t rows = InnerRows(g), cols = InnerCols(g);
  for (int64_t y = 0; y < rows; ++y) {
    std::memcpy(dst + (y + g.pad) * g.pw + g.pad, src + y * g.w, cols * sizeof(float));
  }
}

// The inverse: the H x W plane of a padded buffer, zero where the buffer does not reach.
inline void CropPlane(const float *padded, const Geometry &g, float *dst) {
  std::fill(dst, dst + g.h * g.w, 0.0f);
  const int64_t rows = InnerRows(g), cols = InnerCols(g);
  for (int64_t y = 0; y < rows; ++y) {
    std::memcpy(dst + y * g.w, padded + (y + g.pad) * g.pw + g.pad, cols * sizeof(float));
  }
}

// The loops below take the stride S and kernel size K as constants (K = 0: g.k at run time),
// so that for GhostNet's 3 and 5 the compiler unrolls the taps; the arithmetic and its order
// are the same for every K.
template <int64_t S, int64_t K>
void ForwardPlane(const float *padded, const float *weight, float bias, bool relu, const Geometry &g, float *out) {
  const int64_t k = K ? K : g.k, pw = g.pw, ow = g.ow;
  for (int64_t y = 0; y < g.oh; ++y) {
    float *row = out + y * ow;
    std::fill(row, row + ow, bias);
    for (int64_t i = 0; i < k; ++i) {
      const float *in = padded + (y * S + i) * pw;
      for (int64_t j = 0; j < k; ++j) {
        const float wv = weight[i * k + j];
        const float *src = in + j;
        for (int64_t x = 0; x < ow; ++x) row[x] += wv * src[x * S];
      }
    }
    if (relu) {
      for (int64_t x = 0; x < ow; ++x) row[x] = std::max(row[x], 0.0f);
    }
  }
}

template <int64_t S, int64_t K>
void InputGradPlane(const float *grad_out, const float *weight, const Geometry &g, float *padded_grad) {
  const int64_t k = K ? K : g.k, pw = g.pw, ow = g.ow;
  std::fill(padded_grad, padded_grad + g.ph * pw, 0.0f);
  for (int64_t y = 0; y < g.oh; ++y) {
    const float *go = grad_out + y * ow;
    for (int64_t i = 0; i < k; ++i) {
      float *dst_row = padded_grad + (y * S + i) * pw;
      for (int64_t j = 0; j < k; ++j) {
        const float wv = weight[i * k + j];
        float *dst = dst_row + j;
        for (int64_t x = 0; x < ow; ++x) dst[x * S] += wv * go[x];
      }
    }
  }
}

// Adds one plane's products to `lanes`: k * k rows of OW partial sums, one per output column,
// so that the loop runs across columns (it vectorizes) instead of along one serial sum.
template <int64_t S, int64_t K>
void WeightGradPlane(const float *padded, const float *grad_out, const Geometry &g, float *lanes) {
  const int64_t k = K ? K : g.k, pw = g.pw, ow = g.ow;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      float *acc = lanes + (i * k + j) * ow;
      for (int64_t y = 0; y < g.oh; ++y) {
        const float *src = padded + (y * S + i) * pw + j;
        const float *go = grad_out + y * ow;
        for (int64_t x = 0; x < ow; ++x) acc[x] += src[x * S] * go[x];
      }
    }
  }
}

template <int64_t S, int64_t K>
void BackwardPadded(const float *grad_y, const float *weight, const Geometry &g, float *padded, float *lanes) {
  WeightGradPlane<S, K>(padded, grad_y, g, lanes);
  InputGradPlane<S, K>(grad_y, weight, g, padded);
}

// Calls fn(stride, kernel) with each as a std::integral_constant: GhostNet's kernel sizes 3
// and 5 as constants, any other as 0 (read from the geometry at run time).
template <class F>
void WithGeometryConstants(const Geometry &g, F &&fn) {
  using One = std::integral_constant<int64_t, 1>;
  using Two = std::integral_constant<int64_t, 2>;
  using Three = std::integral_constant<int64_t, 3>;
  using Five = std::integral_constant<int64_t, 5>;
  using Any = std::integral_constant<int64_t, 0>;
  const bool one = g.stride == 1;
  if (g.k == 3) one ? fn(One(), Three()) : fn(Two(), Three());
  else if (g.k == 5) one ? fn(One(), Five()) : fn(Two(), Five());
  else one ? fn(One(), Any()) : fn(Two(), Any());
}

// One plane of the forward from its padded copy (PH x PW): y = conv(x) + bias, then
// max(y, 0) with relu.
inline void ConvolvePadded(const float *padded, const float *weight, float bias, bool relu, const Geometry &g,
                           float *y) {
  WithGeometryConstants(g, [&](auto s, auto k) { ForwardPlane<s(), k()>(padded, weight, bias, relu, g, y); });
}

// One plane of the backward: adds its share of the weight gradient to `lanes` (K * K * OW)
// and writes the input gradient grad_x; `padded` (PH x PW) holds x, then the padded gradient.
inline void BackwardPlane(const float *x, const float *grad_y, const float *weight, const Geometry &g, float *padded,
                          float *lanes, float *grad_x) {
  PadPlane(x, g, padded);
  WithGeometryConstants(g, [&](auto s, auto k) { BackwardPadded<s(), k()>(grad_y, weight, g, padded, lanes); });
  CropPlane(padded, g, grad_x);
}

// A channel's weight gradient (K * K values) from the lanes its planes were added to.
inline void SumLanes(const float *lanes, const Geometry &g, float *grad_weight) {
  for (int64_t t = 0; t < g.k * g.k; ++t) {
    const float *acc = lanes + t * g.ow;
    float sum = 0.0f;
    for (int64_t col = 0; col < g.ow; ++col) sum += acc[col];
    grad_weight[t] = sum;
  }
}

// Channels of planes up to this size take the batched path below.
constexpr int64_t kBatchedPlaneLimit = 64;

inline bool Batched(const Geometry &g) { return g.h * g.w <= kBatchedPlaneLimit; }

// What a thread needs to convolve channels of this geometry, either way.
struct Workspace {
  std::vector<float> padded, lanes;  // one plane at a time
  // batched: the padded input (PH, PW, N), and the values at the output's positions (OH, OW, N):
  // the forward's output, or the backward's incoming gradient
  std::vector<float> batched_in, batched_out;
  explicit Workspace(const Geometry &g)
      : padded(g.ph * g.pw),
        lanes(g.k * g.k * g.ow),
        batched_in(Batched(g) ? g.ph * g.pw * g.n : 0),
        batched_out(Batched(g) ? g.oh * g.ow * g.n : 0) {}
};

// Copies a rows x cols window of each of the n planes (rows `width` long) into dst, laid out
// (row, column, image) with rows `dst_width` long, from (top, left) on.
inline void ToBatchInnermost(ChannelPlanes<const float> planes, int64_t n, int64_t rows, int64_t cols, int64_t width,
                             float *dst, int64_t dst_width, int64_t top, int64_t left) {
  for (int64_t b = 0; b < n; ++b) {
    const float *src = planes[b];
    for (int64_t y = 0; y < rows; ++y) {
      float *row = dst + ((y + top) * dst_width + left) * n + b;
      for (int64_t col = 0; col < cols; ++col) row[col * n] = src[y * width + col];
    }
  }
}

// The inverse: the window of src (laid out as above) at (top, left) into the n planes.
inline void FromBatchInnermost(const float *src, int64_t src_width, int64_t top, int64_t left, int64_t n, int64_t rows,
                               int64_t cols, ChannelPlanes<float> planes, int64_t width) {
  for (int64_t b = 0; b < n; ++b) {
    float *dst = planes[b];
    for (int64_t y = 0; y < rows; ++y) {
      const float *row = src + ((y + top) * src_width + left) * n + b;
      for (int64_t col = 0; col < cols; ++col) dst[y * width + col] = row[col * n];
    }
  }
}

// The n planes of x, padded, into dst as (PH, PW, N).
inline void PadChannelBatched(ChannelPlanes<const float> x, const Geometry &g, float *dst) {
  std::fill(dst, dst + g.ph * g.pw * g.n, 0.0f);
  ToBatchInnermost(x, g.n, InnerRows(g), InnerCols(g), g.w, dst, g.pw, g.pad, g.pad);
}

// ForwardPlane for all n planes at once, on PadChannelBatched's layout, without bias: each
// output value takes its taps in ForwardPlane's order, so the results are equal bit for bit.
template <int64_t S, int64_t K>
void ForwardChannelBatched(const float *padded, const float *weight, const Geometry &g, float *out) {
  const int64_t k = K ? K : g.k, n = g.n, pw = g.pw;
  for (int64_t y = 0; y < g.oh; ++y) {
    for (int64_t col = 0; col < g.ow; ++col) {
      float *acc = out + (y * g.ow + col) * n;
      std::fill(acc, acc + n, 0.0f);
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          const float wv = weight[i * k + j];
          const float *src = padded + ((y * S + i) * pw + col * S + j) * n;
          for (int64_t b = 0; b < n; ++b) acc[b] += wv * src[b];
        }
      }
    }
  }
}

// The depthwise convolution (no bias) of one channel's n planes x into y.
inline void ConvolveChannel(ChannelPlanes<const float> x, const float *weight, const Geometry &g, Workspace *ws,
                            ChannelPlanes<float> y) {
  if (!Batched(g)) {
    for (int64_t b = 0; b < g.n; ++b) {
      PadPlane(x[b], g, ws->padded.data());
      ConvolvePadded(ws->padded.data(), weight, 0.0f, false, g, y[b]);
    }
    return;
  }
  float *padded = ws->batched_in.data(), *out = ws->batched_out.data();
  PadChannelBatched(x, g, padded);
  WithGeometryConstants(g, [&](auto s, auto k) { ForwardChannelBatched<s(), k()>(padded, weight, g, out); });
  FromBatchInnermost(out, g.ow, 0, 0, g.n, g.oh, g.ow, y, g.ow);
}

// The backward on PadChannelBatched's layout: the weight gradient summed over the batch lanes
// (each lane over the output positions first), and the input gradient, padded, into
// `padded_x` in place of x, each value taking its terms in InputGradPlane's order.
template <int64_t S, int64_t K>
void BackwardChannelBatched(float *padded_x, const float *grad, const float *weight, const Geometry &g,
                            float *grad_weight) {
  const int64_t k = K ? K : g.k, n = g.n, pw = g.pw;
  float lanes[16];
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      float total = 0.0f;
      for (int64_t first = 0; first < n; first += 16) {  // the batch in blocks of 16 lanes
        const int64_t width = std::min<int64_t>(16, n - first);
        std::fill(lanes, lanes + width, 0.0f);
        for (int64_t y = 0; y < g.oh; ++y) {
          for (int64_t col = 0; col < g.ow; ++col) {
            const float *src = padded_x + ((y * S + i) * pw + col * S + j) * n + first;
            const float *go = grad + (y * g.ow + col) * n + first;
            for (int64_t b = 0; b < width; ++b) lanes[b] += src[b] * go[b];
          }
        }
        for (int64_t b = 0; b < width; ++b) total += lanes[b];
      }
      grad_weight[i * k + j] = total;
    }
  }
  std::fill(padded_x, padded_x + g.ph * pw * n, 0.0f);
  for (int64_t y = 0; y < g.oh; ++y) {
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const float wv = weight[i * k + j];
        for (int64_t col = 0; col < g.ow; ++col) {
          float *dst = padded_x + ((y * S + i) * pw + col * S + j) * n;
          const float *go = grad + (y * g.ow + col) * n;
          for (int64_t b = 0; b < n; ++b) dst[b] += wv * go[b];
        }
      }
    }
  }
}

// One channel's backward over its n planes: the input gradient into grad_x and the weight
// gradient (K * K). At stride 1 grad_x may be the planes of grad_y: each is read whole before
// it is written.
inline void BackwardChannel(ChannelPlanes<const float> x, ChannelPlanes<const float> grad_y, const float *weight,
                            const Geometry &g, Workspace *ws, ChannelPlanes<float> grad_x, float *grad_weight) {
  if (!Batched(g)) {
    std::fill(ws->lanes.begin(), ws->lanes.end(), 0.0f);
    for (int64_t b = 0; b < g.n; ++b) {
      BackwardPlane(x[b], grad_y[b], weight, g, ws->padded.data(), ws->lanes.data(), grad_x[b]);
    }
    SumLanes(ws->lanes.data(), g, grad_weight);
    return;
  }
  float *padded = ws->batched_in.data(), *grad = ws->batched_out.data();
  PadChannelBatched(x, g, padded);
  ToBatchInnermost(grad_y, g.n, g.oh, g.ow, g.ow, grad, g.ow, 0, 0);
  WithGeometryConstants(g, [&](auto s, auto k) {
    BackwardChannelBatched<s(), k()>(padded, grad, weight, g, grad_weight);
  });
  for (int64_t b = 0; b < g.n; ++b) std::fill(grad_x[b], grad_x[b] + g.h * g.w, 0.0f);  // where padded does not reach
  FromBatchInnermost(padded, g.pw, g.pad, g.pad, g.n, InnerRows(g), InnerCols(g), grad_x, g.w);
}

}  // namespace depthwise
}  // namespace kernels
