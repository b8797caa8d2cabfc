// One channel of a QAT convolution's training arithmetic (src/quant/fake_quant.py), shared by
// the layer's operators one by one (fake_quant.cc) and a depthwise convolution's weight fold,
// convolution and BatchNorm as one operator (qat_depthwise.cc): the same functions, so the
// two give the same results bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace kernels {
namespace qat {

// Mirrors primitives.py: WEIGHT_QMIN/WEIGHT_QMAX and _TINY (ACT_QMIN/ACT_QMAX: ActivationQuant).
constexpr float kWeightQMin = -128.0f, kWeightQMax = 127.0f;
constexpr float kTiny = 1e-12f;

typedef float Floats8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

// One output channel of a weight fake-quantized per channel (primitives.weight_scales and
// fake_quant_weight): symmetric, scale max(max|w| / 127, tiny), integers clamped to
// [-128, 127]. Writes the fake-quantized row to `out`; returns the scale.
inline float FakeQuantWeightRow(const float *row, int64_t count, float *out) {
  float largest = 0.0f;
  for (int64_t i = 0; i < count; ++i) largest = std::max(largest, std::fabs(row[i]));
  const float scale = std::max(largest / kWeightQMax, kTiny);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = std::min(std::max(std::floor(row[i] / scale + 0.5f), kWeightQMin), kWeightQMax) * scale;
  }
  return scale;
}

// One output channel of a weight folded with BatchNorm's moving statistics (times gamma /
// sqrt(moving_variance + eps)) and fake-quantized (FakeQuantWeightRow) into `out`; `folded`
// holds `count` values of scratch. Returns the scale; the moving std as read into *moving_std.
inline float FoldQuantizeWeightRow(const float *row, int64_t count, float gamma, float moving_variance, float eps,
                                   float *folded, float *out, float *moving_std) {
  *moving_std = std::sqrt(moving_variance + eps);
  const float factor = gamma / *moving_std;
  for (int64_t i = 0; i < count; ++i) folded[i] = row[i] * factor;
  return FakeQuantWeightRow(folded, count, out);
}

// The backward of FoldQuantizeWeightRow, straight through the rounding: grad_row = grad_q *
// gamma / moving_std; returns gamma's share, sum(grad_q * row) / moving_std.
inline float FoldQuantizeWeightRowGrad(const float *grad_q, const float *row, int64_t count, float gamma,
                                       float moving_std, float *grad_row) {
  const float factor = gamma / moving_std;
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    grad_row[i] = grad_q[i] * factor;
    sum += static_cast<double>(grad_q[i]) * row[i];
  }
  return static_cast<float>(sum / moving_std);
}

// A bias fake-quantized at the accumulator's scale (primitives.fake_quant_bias), with its
// straight-through sum as the framework computes it.
inline float FakeQuantBiasValue(float bias, float bias_scale) {
  return bias + (std::floor(bias / bias_scale + 0.5f) * bias_scale - bias);
}

// The uint8 scale and zero point of the range [act_min, act_max] widened to hold 0
// (primitives.activation_qparams), in its operations and order.
inline void ActivationQParams(float act_min, float act_max, float *scale, float *zero_point) {
  const float low = std::min(act_min, 0.0f), high = std::max(act_max, 0.0f);
  *scale = std::max((high - low) / 255.0f, kTiny);
  *zero_point = std::min(std::max(std::floor((0.0f - low / *scale) + 0.5f), 0.0f), 255.0f);
}

// The uint8 quantizer of the range [act_min, act_max] (ActivationQParams).
inline ActivationQuant RangeQuant(float act_min, float act_max) {
  float scale, zero_point;
  ActivationQParams(act_min, act_max, &scale, &zero_point);
  return ActivationQuant(scale, zero_point);
}

// [min, max] of parts' ranges into range[0], range[1]; NaN where a part holds NaN
inline void MergeRanges(const std::vector<float> &lows, const std::vector<float> &highs, float *range) {
  range[0] = lows[0];
  range[1] = highs[0];
  for (size_t c = 1; c < lows.size(); ++c) {
    if (std::isnan(lows[c]) || std::isnan(range[0])) {
      range[0] = range[1] = std::numeric_limits<float>::quiet_NaN();
    } else {
      range[0] = std::min(range[0], lows[c]);
      range[1] = std::max(range[1], highs[c]);
    }
  }
}

// An observer's moving step (observers.RangeObserver in training) from the range seen,
// [seen_min, seen_max], in place; none where 1 - decay (ema[1]) is 0: the range is frozen.
inline void StepRange(const float *ema, float seen_min, float seen_max, float *act_min, float *act_max) {
  if (ema[1] == 0.0f) return;
  *act_min = *act_min * ema[0] + seen_min * ema[1];
  *act_max = *act_max * ema[0] + seen_max * ema[1];
}

// An observer's step, in place, from its parts' ranges (none where the range is frozen).
inline void StepRange(const std::vector<float> &lows, const std::vector<float> &highs, const float *ema,
                      float *act_min, float *act_max) {
  float seen[2];
  MergeRanges(lows, highs, seen);
  StepRange(ema, seen[0], seen[1], act_min, act_max);
}

// The BatchNorm side of a QAT convolution (QuantConv2d._train_with_batch_statistics), per
// channel: from the convolution's batch moments (cm, cv) to the output correction and the float
// bias, with BatchNorm on batch statistics (frozen BatchNorm compiles another graph).
struct BatchNormFold {
  double correction, bias, new_mean, new_variance;
  // gradients, given those of correction (gc) and bias (gb)
  double d_conv_mean, d_conv_var, d_gamma, d_beta;

  void Forward(float cm, float cv, float gamma, float beta, float mm, float mv, float eps, float keep,
               double count) {
    const double ms = std::sqrt(static_cast<double>(mv) + eps), k = ms / gamma;
    const double bm = cm * k, bv = cv * k * k, bs = std::sqrt(bv + eps);
    correction = ms / bs;
    bias = beta - gamma * bm / bs;
    const double unbiased = bv * count / std::max(count - 1, 1.0);
    new_mean = mm * keep + bm * (1 - keep);
    new_variance = mv * keep + unbiased * (1 - keep);
  }

  void Backward(float cm, float cv, float gamma, float mv, float eps, double gc, double gb) {
    const double ms = std::sqrt(static_cast<double>(mv) + eps), k = ms / gamma;
    const double bm = cm * k, bv = cv * k * k, bs = std::sqrt(bv + eps);
    d_beta = gb;
    d_gamma = -gb * bm / bs;
    const double d_bm = -gb * gamma / bs;
    const double d_bs = gb * gamma * bm / (bs * bs) - gc * ms / (bs * bs);
    const double d_bv = d_bs / (2 * bs);
    d_conv_mean = d_bm * k;
    d_conv_var = d_bv * k * k;
    const double d_k = d_bm * cm + d_bv * 2 * k * cv;
    d_gamma += d_k * (-ms / (static_cast<double>(gamma) * gamma));
  }
};

// y = x * a + b over one plane (then max(y, 0) with kRelu); the [min, max] of x * a + b (before
// the ReLU: the range the layer's output observer watches) into *lowest, *highest, NaN where a
// value is NaN.
template <bool kRelu>
void AffinePlane(const float *in, int64_t count, float a, float b, float *out, float *lowest, float *highest) {
  // vector types: plain loops with NaN checks are not vectorized (see MinMax)
  const float first = in[0] * a + b;
  const Floats8 av = {a, a, a, a, a, a, a, a}, bv = {b, b, b, b, b, b, b, b}, zero = {};
  Floats8 low = {first, first, first, first, first, first, first, first}, high = low;
  Ints8 nan = {};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    Floats8 v;
    std::memcpy(&v, in + i, sizeof v);
    v = v * av + bv;
    low = v < low ? v : low;
    high = v > high ? v : high;
    nan |= v != v;
    if (kRelu) v = v > zero ? v : zero;
    std::memcpy(out + i, &v, sizeof v);
  }
  float l = low[0], h = high[0];
  bool any_nan = false;
  for (int j = 0; j < 8; ++j) {
    l = std::min(l, low[j]);
    h = std::max(h, high[j]);
    any_nan |= nan[j] != 0;
  }
  for (; i < count; ++i) {
    const float v = in[i] * a + b;
    l = std::min(l, v);
    h = std::max(h, v);
    any_nan |= std::isnan(v);
    out[i] = kRelu ? (v > 0.0f ? v : 0.0f) : v;  // as the vector lanes: NaN becomes 0
  }
  *lowest = any_nan ? std::numeric_limits<float>::quiet_NaN() : l;
  *highest = any_nan ? std::numeric_limits<float>::quiet_NaN() : h;
}

// A QAT BatchNorm on batch statistics after a convolution with the folded, quantized weight,
// per channel: the operands of QatBatchNormForward (see there) from the moving statistics on.
// Writes, for the backward, one row each of `saved` (4, C): the convolution's batch mean and
// variance, the correction, the moving variance as read; then the moving statistics' step.
struct QatBatchNorm {
  const float *gamma, *beta;
  float *moving_mean, *moving_variance;
  float eps, keep, act_scale;
  float *saved;
  int64_t channels;

  // Channel c of the convolution's output x into y (max(y, 0) with kRelu), its weight scale
  // `weight_scale`; each of the n planes' output range into lows[b], highs[b].
  template <bool kRelu>
  void Normalize(int64_t c, ChannelPlanes<const float> x, ChannelPlanes<float> y, int64_t n, int64_t plane,
                 float weight_scale, float *lows, float *highs) const {
    double mean, variance;  // the convolution's
    ChannelMoments(x, n, plane, &mean, &variance);
    const float conv_mean = static_cast<float>(mean), conv_var = static_cast<float>(variance);
    BatchNormFold fold;
    fold.Forward(conv_mean, conv_var, gamma[c], beta[c], moving_mean[c], moving_variance[c], eps, keep,
                 static_cast<double>(n * plane));
    const float correction = static_cast<float>(fold.correction);
    const float bias = FakeQuantBiasValue(static_cast<float>(fold.bias), act_scale * weight_scale);
    for (int64_t b = 0; b < n; ++b) AffinePlane<kRelu>(x[b], plane, correction, bias, y[b], &lows[b], &highs[b]);
    saved[c] = conv_mean;
    saved[channels + c] = conv_var;
    saved[2 * channels + c] = correction;
    saved[3 * channels + c] = moving_variance[c];
    moving_mean[c] = static_cast<float>(fold.new_mean);
    moving_variance[c] = static_cast<float>(fold.new_variance);
  }
};

// The backward of QatBatchNorm::Normalize<kRelu> for channel c (y: its output, read with kRelu;
// x: its input; saved: its rows (4, C); channels: C): grad_x, and gamma's and beta's gradients
// into *grad_gamma, *grad_beta. With kRelu the gradient reaching the BatchNorm, grad_y where y > 0
// else 0, goes into grad_x first; grad_x may be a scratch of n planes of its own.
template <bool kRelu>
void QatBatchNormChannelBackward(ChannelPlanes<const float> grad_y, ChannelPlanes<const float> y,
                                 ChannelPlanes<const float> x, ChannelPlanes<float> grad_x, int64_t n, int64_t plane,
                                 int64_t c, float gamma, const float *saved, int64_t channels, float eps,
                                 float *grad_gamma, float *grad_beta) {
  const float conv_mean = saved[c], conv_var = saved[channels + c], correction = saved[2 * channels + c];
  const float moving_variance = saved[3 * channels + c];
  double total = 0.0, weighted = 0.0;  // of the gradient g reaching the correction and bias, of g * x
  ChannelGradientSums(grad_y, kRelu ? y : ChannelPlanes<const float>(nullptr, 0, 0, 0), x, n, plane, grad_x, &total,
                      &weighted);
  BatchNormFold fold;
  fold.Backward(conv_mean, conv_var, gamma, moving_variance, eps, weighted, total);
  // grad_x = g * correction (the output's own path) + the moments' gradient
  const float inverse_count = 1.0f / static_cast<float>(n * plane);
  const float a = correction, m = conv_mean;
  const float shift = static_cast<float>(fold.d_conv_mean) * inverse_count;
  const float slope = 2.0f * static_cast<float>(fold.d_conv_var) * inverse_count;
  for (int64_t b = 0; b < n; ++b) {
    const float *g = kRelu ? grad_x[b] : grad_y[b];  // in place where masked
    const float *in = x[b];
    float *out = grad_x[b];
    for (int64_t i = 0; i < plane; ++i) out[i] = g[i] * a + (shift + slope * (in[i] - m));
  }
  *grad_gamma = static_cast<float>(fold.d_gamma);
  *grad_beta = static_cast<float>(fold.d_beta);
}

}  // namespace qat
}  // namespace kernels
