// Depthwise convolution of one plane (one channel of one image), shared by the depthwise
// kernels (depthwise_conv.cc) and the depthwise convolution with its BatchNorm
// (depthwise_batchnorm.cc).
//
// float32 planes, weight K x K per channel, symmetric padding K / 2, stride 1 or 2 (recovered
// from the shapes). Each plane is copied into a zeroed padded buffer first, so the inner loops
// run without bounds checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

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

// The rows and columns of an H x W plane that lie inside the PH x PW padded buffer (a
// stride-2 convolution may not reach the last ones).
inline int64_t InnerRows(const Geometry &g) { return std::min(g.h, g.ph - g.pad); }
inline int64_t InnerCols(const Geometry &g) { return std::min(g.w, g.pw - g.pad); }

// Copy one H x W plane into a zeroed PH x PW buffer at offset (pad, pad).
inline void PadPlane(const float *src, const Geometry &g, float *dst) {
  std::fill(dst, dst + g.ph * g.pw, 0.0f);
  const int64_t rows = InnerRows(g), cols = InnerCols(g);
  for (int64_t y = 0; y < rows; ++y) std::memcpy(dst + (y + g.pad) * g.pw + g.pad, src + y * g.w, cols * sizeof(float));
}

// The inverse: the H x W plane of a padded buffer, zero where the buffer does not reach.
inline void CropPlane(const float *padded, const Geometry &g, float *dst) {
  std::fill(dst, dst + g.h * g.w, 0.0f);
  const int64_t rows = InnerRows(g), cols = InnerCols(g);
  for (int64_t y = 0; y < rows; ++y) std::memcpy(dst + y * g.w, padded + (y + g.pad) * g.pw + g.pad, cols * sizeof(float));
}

template <int64_t S>
void ForwardPlane(const float *padded, const float *weight, float bias, bool relu, const Geometry &g, float *out) {
  const int64_t k = g.k, pw = g.pw, ow = g.ow;
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

template <int64_t S>
void InputGradPlane(const float *grad_out, const float *weight, const Geometry &g, float *padded_grad) {
  const int64_t k = g.k, pw = g.pw, ow = g.ow;
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
template <int64_t S>
void WeightGradPlane(const float *padded, const float *grad_out, const Geometry &g, float *lanes) {
  const int64_t k = g.k, pw = g.pw, ow = g.ow;
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

// One plane of the forward from its padded copy (PH x PW): y = conv(x) + bias, then
// max(y, 0) with relu.
inline void ConvolvePadded(const float *padded, const float *weight, float bias, bool relu, const Geometry &g,
                           float *y) {
  if (g.stride == 1) ForwardPlane<1>(padded, weight, bias, relu, g, y);
  else ForwardPlane<2>(padded, weight, bias, relu, g, y);
}

// One plane of the backward: adds its share of the weight gradient to `lanes` (K * K * OW)
// and writes the input gradient grad_x; `padded` (PH x PW) holds x, then the padded gradient.
inline void BackwardPlane(const float *x, const float *grad_y, const float *weight, const Geometry &g, float *padded,
                          float *lanes, float *grad_x) {
  PadPlane(x, g, padded);
  if (g.stride == 1) WeightGradPlane<1>(padded, grad_y, g, lanes);
  else WeightGradPlane<2>(padded, grad_y, g, lanes);
  if (g.stride == 1) InputGradPlane<1>(grad_y, weight, g, padded);
  else InputGradPlane<2>(grad_y, weight, g, padded);
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


}  // namespace depthwise
}  // namespace kernels
