// The fake-quant arithmetic of src/quant/primitives.py in one pass each, as AOT custom operators.
//
// The framework spends seven elementwise passes (clamp, divide, add, floor, multiply and the
// straight-through sum) on each activation and two more reductions on each observed range;
// here each is one pass. The fake-quant of activations, weights and biases and the eval
// parameters equal the framework's results bit for bit: the same float32 operations in the
// same order, without fused multiply-adds (-ffp-contract=off), and the straight-through sum
// c + (q - c) is q exactly (Sterbenz: |q - c| <= scale / 2). QAT's batch statistics, its
// BatchNorm fold and the gradients that sum work in double: equal up to rounding, and the
// same on every run (fixed summation order).
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using kernels::AllFloat32;
using kernels::ChannelShape;
using kernels::ParallelFor;
using kernels::SizesAre;

using kernels::ActivationQuant;
using kernels::Elements;

// Mirrors primitives.py: WEIGHT_QMIN/WEIGHT_QMAX and _TINY (ACT_QMIN/ACT_QMAX: ActivationQuant).
constexpr float kWeightQMin = -128.0f, kWeightQMax = 127.0f;
constexpr float kTiny = 1e-12f;

typedef float Floats8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

void QuantizeAll(const ActivationQuant &quant, const float *x, int64_t count, float *y) {
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    const ActivationQuant q = quant;  // a local copy: the loop vectorizes
    for (int64_t i = begin; i < end; ++i) y[i] = q(x[i]);
  });
}

// grad_x = grad_y where x passes straight through the quantizer, else 0
void StraightThrough(const ActivationQuant &quant, const float *grad_y, const float *x, int64_t count,
                     float *grad_x) {
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    const ActivationQuant q = quant;
    for (int64_t i = begin; i < end; ++i) grad_x[i] = q.Passes(x[i]) ? grad_y[i] : 0.0f;
  });
}

const float *Input(void **params, int i) { return static_cast<const float *>(params[i]); }

// One output channel of a weight fake-quantized per channel (primitives.weight_scales and
// fake_quant_weight): symmetric, scale max(max|w| / 127, tiny), integers clamped to
// [-128, 127]. Writes the fake-quantized row to `out`; returns the scale.
float FakeQuantWeightRow(const float *row, int64_t count, float *out) {
  float largest = 0.0f;
  for (int64_t i = 0; i < count; ++i) largest = std::max(largest, std::fabs(row[i]));
  const float scale = std::max(largest / kWeightQMax, kTiny);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = std::min(std::max(std::floor(row[i] / scale + 0.5f), kWeightQMin), kWeightQMax) * scale;
  }
  return scale;
}

// A bias fake-quantized at the accumulator's scale (primitives.fake_quant_bias), with its
// straight-through sum as the framework computes it.
float FakeQuantBiasValue(float bias, float bias_scale) {
  return bias + (std::floor(bias / bias_scale + 0.5f) * bias_scale - bias);
}

// Every kernel here takes float32 tensors only.
}  // namespace

// params: x, scale (one float), zero_point (one float, an integer value) -> fake-quantized x
extern "C" int FakeQuantActivation(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (!SizesAre({1, 2}, 1, ndims, shapes)) return 3;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (Elements(ndims[3], shapes[3]) != count) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const ActivationQuant quant(*static_cast<const float *>(params[1]), *static_cast<const float *>(params[2]));
  QuantizeAll(quant, x, count, static_cast<float *>(params[3]));
  return 0;
}

// params: grad_y, x, scale, zero_point -> grad_x: grad_y where x lies in the representable
// range (bounds included), else 0: the straight-through estimator
extern "C" int FakeQuantActivationGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (!SizesAre({2, 3}, 1, ndims, shapes)) return 3;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (Elements(ndims[1], shapes[1]) != count || Elements(ndims[4], shapes[4]) != count) return 3;
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const ActivationQuant quant(*static_cast<const float *>(params[2]), *static_cast<const float *>(params[3]));
  StraightThrough(quant, grad_y, x, count, static_cast<float *>(params[4]));
  return 0;
}

// params: x -> (2,) [min(x), max(x)]; NaN propagates
extern "C" int MinMax(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                      void *) {
  if (nparam != 2) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (count == 0 || Elements(ndims[1], shapes[1]) != 2) return 3;
  const float *x = static_cast<const float *>(params[0]);
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  std::vector<float> lows(chunks), highs(chunks);
  ParallelFor(chunks, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * kChunk, last = std::min(count, first + kChunk);
      // GCC/Clang vector types: plain loops with NaN checks are not vectorized (5x slower)
      Floats8 low, high;
      Ints8 nan = {};
      for (int j = 0; j < 8; ++j) low[j] = high[j] = x[first];
      int64_t i = first;
      for (; i + 8 <= last; i += 8) {
        Floats8 v;
        std::memcpy(&v, x + i, sizeof v);
        low = v < low ? v : low;
        high = v > high ? v : high;
        nan |= v != v;
      }
      float lowest = low[0], highest = high[0];
      bool any_nan = false;
      for (int j = 0; j < 8; ++j) {
        lowest = std::min(lowest, low[j]);
        highest = std::max(highest, high[j]);
        any_nan |= nan[j] != 0;
      }
      for (; i < last; ++i) {
        lowest = std::min(lowest, x[i]);
        highest = std::max(highest, x[i]);
        any_nan |= std::isnan(x[i]);
      }
      lows[c] = any_nan ? std::numeric_limits<float>::quiet_NaN() : lowest;
      highs[c] = any_nan ? std::numeric_limits<float>::quiet_NaN() : highest;
    }
  });
  float *y = static_cast<float *>(params[1]);
  y[0] = lows[0];
  y[1] = highs[0];
  for (int64_t c = 1; c < chunks; ++c) {
    if (std::isnan(lows[c]) || std::isnan(y[0])) {
      y[0] = y[1] = std::numeric_limits<float>::quiet_NaN();
    } else {
      y[0] = std::min(y[0], lows[c]);
      y[1] = std::max(y[1], highs[c]);
    }
  }
  return 0;
}

// params: weight (C_out, ...) -> fake-quantized weight, scales (C_out): per output channel,
// symmetric, scale max(max|w| / 127, tiny), integers clamped to [-128, 127]
extern "C" int FakeQuantWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  if (nparam != 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1 || ndims[2] != 1) return 3;
  const int64_t channels = shapes[0][0];
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[1], shapes[1]) != count || shapes[2][0] != channels) return 3;
  const int64_t per_channel = count / channels;
  const float *w = static_cast<const float *>(params[0]);
  float *q = static_cast<float *>(params[1]);
  float *scales = static_cast<float *>(params[2]);
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      scales[c] = FakeQuantWeightRow(w + c * per_channel, per_channel, q + c * per_channel);
    }
  });
  return 0;
}

namespace {

// The uint8 scale and zero point of the range [act_min, act_max] widened to hold 0
// (primitives.activation_qparams), in its operations and order.
void ActivationQParams(float act_min, float act_max, float *scale, float *zero_point) {
  const float low = std::min(act_min, 0.0f), high = std::max(act_max, 0.0f);
  *scale = std::max((high - low) / 255.0f, kTiny);
  *zero_point = std::min(std::max(std::floor((0.0f - low / *scale) + 0.5f), 0.0f), 255.0f);
}

// What an int8 layer computes with in eval, from a fake-quant layer's float parameters:
// params: weight (C, ...), bias or BatchNorm beta (C), act_min (1), act_max (1)
//         [, BatchNorm gamma, moving_mean, moving_variance (C), eps (1)]
//   -> fake-quantized folded weight, fake-quantized folded bias (C), input scale (1), input zero point (1)
// The operations of QuantConv2d.folded, weight_scales, fake_quant_weight and fake_quant_bias, in order.
int EvalParams(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool batchnorm) {
  const int inputs = batchnorm ? 8 : 4;
  if (nparam != inputs + 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0];
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[inputs], shapes[inputs]) != count) return 3;
  if (!SizesAre({1, inputs + 1}, channels, ndims, shapes)) return 3;
  if (!SizesAre({2, 3, inputs + 2, inputs + 3}, 1, ndims, shapes)) return 3;
  if (batchnorm && (!SizesAre({4, 5, 6}, channels, ndims, shapes) || !SizesAre({7}, 1, ndims, shapes))) return 3;
  float *weight_out = static_cast<float *>(params[inputs]);
  float *bias_out = static_cast<float *>(params[inputs + 1]);
  float *scale_out = static_cast<float *>(params[inputs + 2]);
  float *zero_point_out = static_cast<float *>(params[inputs + 3]);
  float act_scale, zero_point;
  ActivationQParams(*Input(params, 2), *Input(params, 3), &act_scale, &zero_point);
  const int64_t per_channel = count / channels;
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    std::vector<float> folded(batchnorm ? per_channel : 0);
    for (int64_t c = begin; c < end; ++c) {
      const float *row = Input(params, 0) + c * per_channel;
      float bias = Input(params, 1)[c];
      if (batchnorm) {
        const float gamma = Input(params, 4)[c], mean = Input(params, 5)[c];
        const float std = std::sqrt(Input(params, 6)[c] + *Input(params, 7));
        const float factor = gamma / std;
        for (int64_t i = 0; i < per_channel; ++i) folded[i] = row[i] * factor;
        bias = bias - gamma * mean / std;
      }
      const float scale = FakeQuantWeightRow(batchnorm ? folded.data() : row, per_channel,
                                             weight_out + c * per_channel);
      bias_out[c] = FakeQuantBiasValue(bias, act_scale * scale);
    }
  });
  *scale_out = act_scale;
  *zero_point_out = zero_point;
  return 0;
}

}  // namespace

// params: weight, bias, act_min, act_max -> weight, bias, scale, zero point (see EvalParams)
extern "C" int QuantLayerEvalParams(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  return EvalParams(nparam, params, ndims, shapes, dtypes, false);
}

// params: weight, beta, act_min, act_max, gamma, moving_mean, moving_variance, eps -> as above, BatchNorm folded
extern "C" int QuantLayerEvalParamsBatchNorm(int nparam, void **params, int *ndims, int64_t **shapes,
                                             const char **dtypes, void *, void *) {
  return EvalParams(nparam, params, ndims, shapes, dtypes, true);
}

// Batch statistics for QAT's BatchNorm folding: per channel of an NCHW tensor.

// params: x (N, C, H, W) -> mean (C), variance (C, biased: over N * H * W). Sums in double,
// each channel by one thread in a fixed order: the same result on every run.
extern "C" int ChannelMoments(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam != 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1, 2}, channels, ndims, shapes)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  float *mean = static_cast<float *>(params[1]);
  float *variance = static_cast<float *>(params[2]);
  const double count = static_cast<double>(n * plane);
  ParallelFor(channels, n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0.0;
      for (int64_t b = 0; b < n; ++b) {
        const float *p = x + (b * channels + c) * plane;
        for (int64_t i = 0; i < plane; ++i) sum += p[i];
      }
      const double m = sum / count;
      double squares = 0.0;
      for (int64_t b = 0; b < n; ++b) {
        const float *p = x + (b * channels + c) * plane;
        for (int64_t i = 0; i < plane; ++i) {
          const double d = p[i] - m;
          squares += d * d;
        }
      }
      mean[c] = static_cast<float>(m);
      variance[c] = static_cast<float>(squares / count);
    }
  });
  return 0;
}

// params: x, mean, grad_mean, grad_variance -> grad_x = (grad_mean + 2 grad_variance (x - mean)) / (N H W)
extern "C" int ChannelMomentsGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1, 2, 3}, channels, ndims, shapes)) return 3;
  if (Elements(ndims[4], shapes[4]) != n * channels * plane) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *mean = static_cast<const float *>(params[1]);
  const float *grad_mean = static_cast<const float *>(params[2]);
  const float *grad_variance = static_cast<const float *>(params[3]);
  float *grad_x = static_cast<float *>(params[4]);
  const float inverse_count = 1.0f / static_cast<float>(n * plane);
  ParallelFor(n * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels;
      const float m = mean[c], offset = grad_mean[c] * inverse_count, slope = 2.0f * grad_variance[c] * inverse_count;
      const float *in = x + p * plane;
      float *out = grad_x + p * plane;
      for (int64_t i = 0; i < plane; ++i) out[i] = offset + slope * (in[i] - m);
    }
  });
  return 0;
}

// QAT's per-layer arithmetic in single operators: what would be tens of framework operators
// on tiny tensors (each costing more to launch than to run) per layer and step.

namespace {

void MinMaxOf(const float *x, int64_t count, float *lowest, float *highest);

}  // namespace

// params: x, act_min (1), act_max (1), ema (2: decay, 1 - decay) -> new act_min (1), new act_max (1):
// the observer's moving range, act * decay + seen * (1 - decay) (observers.RangeObserver)
extern "C" int RangeEma(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  if (nparam != 6) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (count == 0 || Elements(ndims[3], shapes[3]) != 2) return 3;
  if (!SizesAre({1, 2, 4, 5}, 1, ndims, shapes)) return 3;
  const float *ema = static_cast<const float *>(params[3]);
  float seen_min, seen_max;
  MinMaxOf(static_cast<const float *>(params[0]), count, &seen_min, &seen_max);
  *static_cast<float *>(params[4]) = *static_cast<const float *>(params[1]) * ema[0] + seen_min * ema[1];
  *static_cast<float *>(params[5]) = *static_cast<const float *>(params[2]) * ema[0] + seen_max * ema[1];
  return 0;
}

// params: x, act_min (1), act_max (1) -> fake-quantized x, scale (1): FakeQuantActivation with the
// scale and zero point of the range (primitives.activation_qparams) computed here
extern "C" int FakeQuantActivationInRange(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (!SizesAre({3}, count, ndims, shapes) || !SizesAre({1, 2, 4}, 1, ndims, shapes)) return 3;
  float scale, zero_point;
  ActivationQParams(*static_cast<const float *>(params[1]), *static_cast<const float *>(params[2]), &scale,
                    &zero_point);
  const ActivationQuant quant(scale, zero_point);
  QuantizeAll(quant, static_cast<const float *>(params[0]), count, static_cast<float *>(params[3]));
  *static_cast<float *>(params[4]) = scale;
  return 0;
}

// params: act_min (1), act_max (1) -> scale (1) of the range (primitives.activation_qparams), for a
// layer whose input arrives quantized and which needs only the scale
extern "C" int ActivationScale(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                               void *) {
  if (nparam != 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (!SizesAre({0, 1, 2}, 1, ndims, shapes)) return 3;
  float scale, zero_point;
  ActivationQParams(*static_cast<const float *>(params[0]), *static_cast<const float *>(params[1]), &scale,
                    &zero_point);
  *static_cast<float *>(params[2]) = scale;
  return 0;
}

// params: grad_y, x, act_min, act_max -> grad_x: the straight-through mask of the range's quantizer
extern "C" int FakeQuantActivationInRangeGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                              const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1, 4}, count, ndims, shapes) || !SizesAre({2, 3}, 1, ndims, shapes)) return 3;
  float scale, zero_point;
  ActivationQParams(*static_cast<const float *>(params[2]), *static_cast<const float *>(params[3]), &scale,
                    &zero_point);
  const ActivationQuant quant(scale, zero_point);
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  StraightThrough(quant, grad_y, x, count, static_cast<float *>(params[4]));
  return 0;
}

// params: bias (C), act_scale (1), weight scales (C) -> fake-quantized bias (primitives.fake_quant_bias)
extern "C" int FakeQuantBias(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t channels = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1}, 1, ndims, shapes) || !SizesAre({2, 3}, channels, ndims, shapes)) return 3;
  const float *bias = static_cast<const float *>(params[0]);
  const float act_scale = *static_cast<const float *>(params[1]);
  const float *scales = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  for (int64_t c = 0; c < channels; ++c) out[c] = FakeQuantBiasValue(bias[c], act_scale * scales[c]);
  return 0;
}

namespace {

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

  void Backward(float cm, float cv, float gamma, float mv, float eps, float gc, float gb) {
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

}  // namespace

// params: conv_mean, conv_var, gamma, beta, moving_mean, moving_variance (C), eps, keep (the moving
// statistics' share in their update), count (1 each) -> correction, bias, new moving_mean, new
// moving_variance, and a copy of moving_variance as read (C): the gradient needs that value, and
// the parameter holds the new one by the time it runs
extern "C" int BatchNormFoldForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  if (nparam != 14) return 1;
  const int64_t channels = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1, 2, 3, 4, 5, 9, 10, 11, 12, 13}, channels, ndims, shapes)) return 3;
  if (!SizesAre({6, 7, 8}, 1, ndims, shapes)) return 3;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const float eps = *Input(params, 6), keep = *Input(params, 7);
  const double count = *Input(params, 8);
  for (int64_t c = 0; c < channels; ++c) {
    BatchNormFold fold;
    fold.Forward(Input(params, 0)[c], Input(params, 1)[c], Input(params, 2)[c], Input(params, 3)[c],
                 Input(params, 4)[c], Input(params, 5)[c], eps, keep, count);
    static_cast<float *>(params[9])[c] = static_cast<float>(fold.correction);
    static_cast<float *>(params[10])[c] = static_cast<float>(fold.bias);
    static_cast<float *>(params[11])[c] = static_cast<float>(fold.new_mean);
    static_cast<float *>(params[12])[c] = static_cast<float>(fold.new_variance);
    static_cast<float *>(params[13])[c] = Input(params, 5)[c];
  }
  return 0;
}

// params: conv_mean, conv_var, gamma, moving_variance (C), eps (1), grad_correction, grad_bias (C)
// -> grad conv_mean, grad conv_var, grad gamma, grad beta (C)
extern "C" int BatchNormFoldBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *, void *) {
  if (nparam != 11) return 1;
  const int64_t channels = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1, 2, 3, 5, 6, 7, 8, 9, 10}, channels, ndims, shapes)) return 3;
  if (!SizesAre({4}, 1, ndims, shapes)) return 3;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const float eps = *Input(params, 4);
  for (int64_t c = 0; c < channels; ++c) {
    BatchNormFold fold;
    fold.Backward(Input(params, 0)[c], Input(params, 1)[c], Input(params, 2)[c], Input(params, 3)[c], eps,
                  Input(params, 5)[c], Input(params, 6)[c]);
    static_cast<float *>(params[7])[c] = static_cast<float>(fold.d_conv_mean);
    static_cast<float *>(params[8])[c] = static_cast<float>(fold.d_conv_var);
    static_cast<float *>(params[9])[c] = static_cast<float>(fold.d_gamma);
    static_cast<float *>(params[10])[c] = static_cast<float>(fold.d_beta);
  }
  return 0;
}

namespace {

void MinMaxOf(const float *x, int64_t count, float *lowest, float *highest) {
  // the MinMax kernel's reduction, on already checked input
  void *params[2] = {const_cast<float *>(x), nullptr};
  float out[2];
  params[1] = out;
  int64_t shape[1] = {count}, two[1] = {2};
  int64_t *shapes[2] = {shape, two};
  int ndims[2] = {1, 1};
  const char *dtypes[2] = {"float32", "float32"};
  MinMax(2, params, ndims, shapes, dtypes, nullptr, nullptr);
  *lowest = out[0];
  *highest = out[1];
}

}  // namespace

// params: x (N, C, H, W), scale (C), shift (C) -> x * scale + shift per channel (a QAT
// convolution's BatchNorm correction and bias in one pass)
extern "C" int ChannelAffine(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1, 2}, channels, ndims, shapes) || !SizesAre({3}, n * channels * plane, ndims, shapes)) return 3;
  const float *x = Input(params, 0), *scale = Input(params, 1), *shift = Input(params, 2);
  float *y = static_cast<float *>(params[3]);
  ParallelFor(n * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float a = scale[p % channels], b = shift[p % channels];
      const float *in = x + p * plane;
      float *out = y + p * plane;
      for (int64_t i = 0; i < plane; ++i) out[i] = in[i] * a + b;
    }
  });
  return 0;
}

// params: grad_y, x, scale -> grad_x = grad_y * scale, grad_scale = sum(grad_y * x), grad_shift =
// sum(grad_y) per channel (sums in double, each channel by one thread: the same on every run)
extern "C" int ChannelAffineGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 6) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1, 3}, n * channels * plane, ndims, shapes) || !SizesAre({2, 4, 5}, channels, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = Input(params, 0), *x = Input(params, 1), *scale = Input(params, 2);
  float *grad_x = static_cast<float *>(params[3]);
  float *grad_scale = static_cast<float *>(params[4]);
  float *grad_shift = static_cast<float *>(params[5]);
  ParallelFor(channels, n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double weighted = 0.0, total = 0.0;
      const float a = scale[c];
      for (int64_t b = 0; b < n; ++b) {
        const int64_t offset = (b * channels + c) * plane;
        const float *g = grad_y + offset, *in = x + offset;
        float *out = grad_x + offset;
        for (int64_t i = 0; i < plane; ++i) {
          out[i] = g[i] * a;
          weighted += static_cast<double>(g[i]) * in[i];
          total += g[i];
        }
      }
      grad_scale[c] = static_cast<float>(weighted);
      grad_shift[c] = static_cast<float>(total);
    }
  });
  return 0;
}

// params: weight (C, ...), gamma (C), moving_variance (C), eps (1) -> fake-quantized weight * gamma /
// sqrt(moving_variance + eps) (FakeQuantWeight of the folded weight), its scales (C), and the
// moving standard deviation as read (C: the gradient needs it; the parameter changes before)
extern "C" int FoldQuantizeWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *, void *) {
  if (nparam != 7) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0], count = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1, 2, 5, 6}, channels, ndims, shapes)) return 3;
  if (channels == 0 || Elements(ndims[3], shapes[3]) != 1 || Elements(ndims[4], shapes[4]) != count) return 3;
  const int64_t per_channel = count / channels;
  const float *w = Input(params, 0), *gamma = Input(params, 1), *variance = Input(params, 2);
  const float eps = *Input(params, 3);
  float *q = static_cast<float *>(params[4]), *scales = static_cast<float *>(params[5]);
  float *moving_std = static_cast<float *>(params[6]);
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    std::vector<float> folded(per_channel);
    for (int64_t c = begin; c < end; ++c) {
      moving_std[c] = std::sqrt(variance[c] + eps);
      const float factor = gamma[c] / moving_std[c];
      const float *row = w + c * per_channel;
      for (int64_t i = 0; i < per_channel; ++i) folded[i] = row[i] * factor;
      scales[c] = FakeQuantWeightRow(folded.data(), per_channel, q + c * per_channel);
    }
  });
  return 0;
}

// params: grad_q, weight, gamma, moving_std -> grad_weight = grad_q * gamma / moving_std,
// grad_gamma = sum(grad_q * weight) / moving_std per channel (straight through the rounding)
extern "C" int FoldQuantizeWeightGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                      const char **dtypes, void *, void *) {
  if (nparam != 6) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0], count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[1], shapes[1]) != count || Elements(ndims[4], shapes[4]) != count) return 3;
  if (!SizesAre({2, 3, 5}, channels, ndims, shapes)) return 3;
  const int64_t per_channel = count / channels;
  const float *grad_q = Input(params, 0), *w = Input(params, 1), *gamma = Input(params, 2);
  const float *moving_std = Input(params, 3);
  float *grad_w = static_cast<float *>(params[4]), *grad_gamma = static_cast<float *>(params[5]);
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float factor = gamma[c] / moving_std[c];
      double sum = 0.0;
      for (int64_t i = 0; i < per_channel; ++i) {
        const int64_t k = c * per_channel + i;
        grad_w[k] = grad_q[k] * factor;
        sum += static_cast<double>(grad_q[k]) * w[k];
      }
      grad_gamma[c] = static_cast<float>(sum / moving_std[c]);
    }
  });
  return 0;
}
