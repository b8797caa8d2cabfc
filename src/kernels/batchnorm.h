// One channel of BatchNorm in training (batch statistics), forward and backward, shared by
// the BatchNorm kernels (batchnorm.cc) and the depthwise convolution with its BatchNorm
// (depthwise_batchnorm.cc).
// Two passes over the channel's planes each: the sums (in double, shifted: see
// ChannelMoments), then the affine map.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"

namespace kernels {

// A channel's batch statistics, as the forward found them.
struct ChannelStatistics {
  double mean, variance, inv_std;  // variance biased; inv_std = 1 / sqrt(variance + eps)
};

// y = (x - mean) * inv_std * gamma + beta over the channel's n planes, then max(y, 0) with
// kRelu; returns the batch statistics it used.
template <bool kRelu>
ChannelStatistics NormalizeChannel(ChannelPlanes<const float> x, ChannelPlanes<float> y, int64_t n, int64_t plane,
                                   float gamma, float beta, double eps) {
  ChannelStatistics s;
  ChannelMoments(x, n, plane, &s.mean, &s.variance);
  s.inv_std = 1.0 / std::sqrt(s.variance + eps);
  const float m = static_cast<float>(s.mean), a = static_cast<float>(gamma * s.inv_std);
  for (int64_t b = 0; b < n; ++b) {
    const float *in = x[b];
    float *out = y[b];
    if (kRelu) {
      for (int64_t i = 0; i < plane; ++i) out[i] = std::max(a * (in[i] - m) + beta, 0.0f);
    } else {
      for (int64_t i = 0; i < plane; ++i) out[i] = a * (in[i] - m) + beta;
    }
  }
  return s;
}

// A training BatchNorm operator's own operands, laid out alike in every such kernel (in
// FastBatchNorm2d.statistics_inputs' order): gamma, beta, moving_mean, moving_variance (C), keep
// (1), eps (1) from params[inputs] on; batch mean, inv_std, new moving mean, new moving
// variance (C) from params[outputs] on.
struct BatchNormOperands {
  const float *gamma, *beta, *moving_mean, *moving_variance;
  double keep, eps;
  float *mean, *inv_std, *new_mean, *new_variance;

  static bool ShapesFit(int inputs, int outputs, int64_t channels, int *ndims, int64_t **shapes) {
    return SizesAre({inputs, inputs + 1, inputs + 2, inputs + 3, outputs, outputs + 1, outputs + 2, outputs + 3},
                    channels, ndims, shapes) &&
           SizesAre({inputs + 4, inputs + 5}, 1, ndims, shapes);
  }

  BatchNormOperands(void **params, int inputs, int outputs)
      : gamma(static_cast<const float *>(params[inputs])),
        beta(static_cast<const float *>(params[inputs + 1])),
        moving_mean(static_cast<const float *>(params[inputs + 2])),
        moving_variance(static_cast<const float *>(params[inputs + 3])),
        keep(*static_cast<const float *>(params[inputs + 4])),
        eps(*static_cast<const float *>(params[inputs + 5])),
        mean(static_cast<float *>(params[outputs])),
        inv_std(static_cast<float *>(params[outputs + 1])),
        new_mean(static_cast<float *>(params[outputs + 2])),
        new_variance(static_cast<float *>(params[outputs + 3])) {}

  // NormalizeChannel<kRelu> of channel c, x's planes into y's, and its statistics written: the
  // batch's, for the backward, and the moving statistics' step. The batch's share of that is
  // 1 - keep, its variance unbiased (count / (count - 1), count = N H W), as MindSpore's
  // BatchNorm does.
  template <bool kRelu>
  void Normalize(int64_t c, ChannelPlanes<const float> x, ChannelPlanes<float> y, int64_t n, int64_t plane) const {
    const ChannelStatistics s = NormalizeChannel<kRelu>(x, y, n, plane, gamma[c], beta[c], eps);
    mean[c] = static_cast<float>(s.mean);
    inv_std[c] = static_cast<float>(s.inv_std);
    const double count = static_cast<double>(n * plane);
    const double unbiased = s.variance * count / std::max(count - 1.0, 1.0);
    new_mean[c] = static_cast<float>(moving_mean[c] * keep + s.mean * (1.0 - keep));
    new_variance[c] = static_cast<float>(moving_variance[c] * keep + unbiased * (1.0 - keep));
  }
};

// The backward of NormalizeChannel<kRelu> (y is its output, read with kRelu only):
//   g = grad_y (where y > 0 with kRelu), grad_beta = sum(g), grad_gamma = sum(g * x_hat),
//   grad_x = gamma * inv_std * (g - grad_beta / M - x_hat * grad_gamma / M), M = N H W.
// grad_x may be the planes of grad_y (in place).
template <bool kRelu>
void NormalizeChannelBackward(ChannelPlanes<const float> grad_y, ChannelPlanes<const float> y,
                              ChannelPlanes<const float> x, ChannelPlanes<float> grad_x, int64_t n, int64_t plane,
                              float gamma, float mean, float inv_std, float *grad_gamma, float *grad_beta) {
  double sum = 0.0, dot = 0.0;  // of the gradient g reaching the BatchNorm and of g * x
  ChannelGradientSums(grad_y, kRelu ? y : ChannelPlanes<const float>(nullptr, 0, 0, 0), x, n, plane, grad_x, &sum,
                      &dot);
  const double m = mean, s = inv_std;
  const double d_gamma = (dot - m * sum) * s;  // sum(g * x_hat)
  const double k = gamma * s;
  const double count = static_cast<double>(n * plane);
  // grad_x = k * g - k * s * d_gamma / M * (x - m) - k * sum / M
  const float a = static_cast<float>(k), slope = static_cast<float>(-k * s * d_gamma / count),
              shift = static_cast<float>(-k * sum / count), centre = mean;
  for (int64_t b = 0; b < n; ++b) {
    const float *g = kRelu ? grad_x[b] : grad_y[b];  // in place where masked
    const float *in = x[b];
    float *out = grad_x[b];
    for (int64_t i = 0; i < plane; ++i) out[i] = a * g[i] + slope * (in[i] - centre) + shift;
  }
  *grad_gamma = static_cast<float>(d_gamma);
  *grad_beta = static_cast<float>(sum);
}

// The backward's BatchNorm operands, laid out alike in every such kernel: gamma, the forward's
// batch mean and inv_std (C) from params[inputs] on; grad_gamma, grad_beta (C) from
// params[outputs] on.
struct BatchNormGradOperands {
  const float *gamma, *mean, *inv_std;
  float *grad_gamma, *grad_beta;

  static bool ShapesFit(int inputs, int outputs, int64_t channels, int *ndims, int64_t **shapes) {
    return SizesAre({inputs, inputs + 1, inputs + 2, outputs, outputs + 1}, channels, ndims, shapes);
  }

  BatchNormGradOperands(void **params, int inputs, int outputs)
      : gamma(static_cast<const float *>(params[inputs])),
        mean(static_cast<const float *>(params[inputs + 1])),
        inv_std(static_cast<const float *>(params[inputs + 2])),
        grad_gamma(static_cast<float *>(params[outputs])),
        grad_beta(static_cast<float *>(params[outputs + 1])) {}

  // NormalizeChannelBackward<kRelu> of channel c.
  template <bool kRelu>
  void Backward(int64_t c, ChannelPlanes<const float> grad_y, ChannelPlanes<const float> y,
                ChannelPlanes<const float> x, ChannelPlanes<float> grad_x, int64_t n, int64_t plane) const {
    NormalizeChannelBackward<kRelu>(grad_y, y, x, grad_x, n, plane, gamma[c], mean[c], inv_std[c], &grad_gamma[c],
                                    &grad_beta[c]);
  }
};

}  // namespace kernels
