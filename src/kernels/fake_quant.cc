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
#include "qat.h"

namespace {

using kernels::AllFloat32;
using kernels::ChannelGradientSums;
using kernels::ChannelMoments;
using kernels::ChannelShape;
using kernels::ParallelFor;
using kernels::SizesAre;

using kernels::ActivationQuant;
using kernels::ChannelPlanes;
using kernels::Elements;

using kernels::qat::ActivationQParams;
using kernels::qat::AffinePlane;
using kernels::qat::FakeQuantBiasValue;
using kernels::qat::FakeQuantWeightRow;
using kernels::qat::Floats8;
using kernels::qat::FoldQuantizeWeightRow;
using kernels::qat::FoldQuantizeWeightRowGrad;
using kernels::qat::Ints8;
using kernels::qat::MergeRanges;
using kernels::qat::QatBatchNorm;
using kernels::qat::QatBatchNormChannelBackward;
using kernels::qat::RangeQuant;
using kernels::qat::StepRange;

// y[i] = quant(x[i]) over [begin, end), on this thread
void QuantizeRange(const ActivationQuant &quant, const float *x, int64_t begin, int64_t end, float *y) {
  const ActivationQuant q = quant;  // a local copy: the loop vectorizes
  for (int64_t i = begin; i < end; ++i) y[i] = q(x[i]);
}

void QuantizeAll(const ActivationQuant &quant, const float *x, int64_t count, float *y) {
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) { QuantizeRange(quant, x, begin, end, y); });
}

// grad_x = grad_y where x passes straight through the quantizer, else 0, over [begin, end), on this thread
void StraightThroughRange(const ActivationQuant &quant, const float *grad_y, const float *x, int64_t begin,
                          int64_t end, float *grad_x) {
  const ActivationQuant q = quant;
  // vector types: the compiler does not vectorize the select below (measured 1.5x slower)
  const Floats8 low = {q.low, q.low, q.low, q.low, q.low, q.low, q.low, q.low}, zero = {};
  const Floats8 high = {q.high, q.high, q.high, q.high, q.high, q.high, q.high, q.high};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    Floats8 v, g;
    std::memcpy(&v, x + i, sizeof v);
    std::memcpy(&g, grad_y + i, sizeof g);
    const Floats8 passed = (v >= low) & (v <= high) ? g : zero;
    std::memcpy(grad_x + i, &passed, sizeof passed);
  }
  for (; i < end; ++i) grad_x[i] = q.Passes(x[i]) ? grad_y[i] : 0.0f;
}

void StraightThrough(const ActivationQuant &quant, const float *grad_y, const float *x, int64_t count,
                     float *grad_x) {
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    StraightThroughRange(quant, grad_y, x, begin, end, grad_x);
  });
}

const float *Input(void **params, int i) { return static_cast<const float *>(params[i]); }

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
  MergeRanges(lows, highs, static_cast<float *>(params[1]));
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

// params: x, act_min (1), act_max (1) -> new act_min (1), new act_max (1): the range widened to
// cover x (observers.RangeObserver while calibrating); a NaN stays, so that the range is refused
// when saved rather than taken for good on the next batch
extern "C" int RangeWiden(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (count == 0) return 3;
  if (!SizesAre({1, 2, 3, 4}, 1, ndims, shapes)) return 3;
  float seen[2];
  MinMaxOf(static_cast<const float *>(params[0]), count, &seen[0], &seen[1]);
  const std::vector<float> lows = {*static_cast<const float *>(params[1]), seen[0]};
  const std::vector<float> highs = {*static_cast<const float *>(params[2]), seen[1]};
  float range[2];
  MergeRanges(lows, highs, range);
  *static_cast<float *>(params[3]) = range[0];
  *static_cast<float *>(params[4]) = range[1];
  return 0;
}

namespace {

// x fake-quantized into y with the scale and zero point of the range [act_min, act_max]
// (primitives.activation_qparams); the scale into *scale_out, the range into range_out (2), for
// the backward: it must not read the range's parameters, which may take their step in place
// before it runs.
void QuantizeInRange(const float *x, int64_t count, float act_min, float act_max, float *y, float *scale_out,
                     float *range_out) {
  const ActivationQuant quant = RangeQuant(act_min, act_max);
  QuantizeAll(quant, x, count, y);
  *scale_out = quant.scale;
  range_out[0] = act_min;
  range_out[1] = act_max;
}

}  // namespace

namespace {

// FakeQuantActivationInRange and, `observed`, FakeQuantActivationObserved: see there.
int ActivationInRange(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool observed) {
  const int inputs = observed ? 4 : 3;  // x, act_min, act_max[, ema]
  if (nparam != inputs + 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (!SizesAre({inputs}, count, ndims, shapes) || !SizesAre({1, 2, inputs + 1}, 1, ndims, shapes) ||
      !SizesAre({inputs + 2}, 2, ndims, shapes) || (observed && (count == 0 || !SizesAre({3}, 2, ndims, shapes)))) {
    return 3;
  }
  const float *x = Input(params, 0);
  float *act_min = static_cast<float *>(params[1]), *act_max = static_cast<float *>(params[2]);
  if (observed) {
    float seen_min, seen_max;
    MinMaxOf(x, count, &seen_min, &seen_max);
    StepRange(Input(params, 3), seen_min, seen_max, act_min, act_max);
  }
  QuantizeInRange(x, count, *act_min, *act_max, static_cast<float *>(params[inputs]),
                  static_cast<float *>(params[inputs + 1]), static_cast<float *>(params[inputs + 2]));
  return 0;
}

}  // namespace

// params: x, act_min (1), act_max (1) -> fake-quantized x, scale (1), the range as read (2):
// FakeQuantActivation with the scale and zero point of the range computed here
extern "C" int FakeQuantActivationInRange(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *, void *) {
  return ActivationInRange(nparam, params, ndims, shapes, dtypes, false);
}

// An observed input in a training step (RangeObserver's step, then fake_quant.quantize_in_range)
// in one operator: params: x, act_min (1), act_max (1), ema (2: decay, 1 - decay)
//   -> as FakeQuantActivationInRange, with the range after its step.
// The range takes its step in place from x's [min, max] (none where frozen: 1 - decay = 0);
// nothing else in a training step reads it (the layer's own input quantization).
extern "C" int FakeQuantActivationObserved(int nparam, void **params, int *ndims, int64_t **shapes,
                                           const char **dtypes, void *, void *) {
  return ActivationInRange(nparam, params, ndims, shapes, dtypes, true);
}

// params: x, act_min (1), act_max (1) -> scale (1) of the range (primitives.activation_qparams), for a
// layer whose input x arrives quantized and which needs only the scale. x is not read: it orders
// this read after what computed x (a ghost module's concatenation, which takes the range's step
// in place).
extern "C" int ActivationScale(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                               void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (!SizesAre({1, 2, 3}, 1, ndims, shapes)) return 3;
  float scale, zero_point;
  ActivationQParams(*Input(params, 1), *Input(params, 2), &scale, &zero_point);
  *static_cast<float *>(params[3]) = scale;
  return 0;
}

// params: grad_y, x, range (2: as the forward read it) -> grad_x: the straight-through mask of the
// range's quantizer (FakeQuantActivationInRange's and FakeQuantActivationObserved's backward)
extern "C" int FakeQuantActivationInRangeGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                              const char **dtypes, void *, void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (!SizesAre({1, 3}, count, ndims, shapes) || !SizesAre({2}, 2, ndims, shapes)) return 3;
  const float *range = Input(params, 2);
  StraightThrough(RangeQuant(range[0], range[1]), Input(params, 0), Input(params, 1), count,
                  static_cast<float *>(params[3]));
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

namespace {

// The forward of QatBatchNormForward and QatBatchNormReluForward; see there.
template <bool kRelu>
int QatForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 14) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1, 2, 3, 4, 8}, channels, ndims, shapes) || !SizesAre({5, 6, 7, 9, 10}, 1, ndims, shapes) ||
      !SizesAre({11}, 2, ndims, shapes) || !SizesAre({12}, n * channels * plane, ndims, shapes) ||
      !SizesAre({13}, 4 * channels, ndims, shapes)) {
    return 3;
  }
  const float *x = Input(params, 0), *scales = Input(params, 8);
  // for the backward, one row each: conv mean, conv variance, correction, moving variance as read
  const QatBatchNorm bn{Input(params, 1), Input(params, 2), static_cast<float *>(params[3]),
                        static_cast<float *>(params[4]), *Input(params, 5), *Input(params, 6), *Input(params, 7),
                        static_cast<float *>(params[13]), channels};
  float *act_min = static_cast<float *>(params[9]), *act_max = static_cast<float *>(params[10]);
  float *y = static_cast<float *>(params[12]);
  std::vector<float> lows(n * channels), highs(n * channels);  // per plane
  ParallelFor(channels, 2 * n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      bn.Normalize<kRelu>(c, ChannelPlanes<const float>(x, channels, plane, c),
                          ChannelPlanes<float>(y, channels, plane, c), n, plane, scales[c], &lows[c * n],
                          &highs[c * n]);
    }
  });
  StepRange(lows, highs, Input(params, 11), act_min, act_max);
  return 0;
}

// The backward of both; with kRelu, params[1] is the forward's output y, and the gradient
// reaching the BatchNorm is grad_y where y > 0, else 0 (written into grad_x first).
template <bool kRelu>
int QatBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr int kX = kRelu ? 2 : 1;  // the positions after grad_y (and y)
  if (nparam != kX + 7) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[kX], shapes[kX], &n, &channels, &plane)) return 3;
  const int64_t values = n * channels * plane;
  if (!SizesAre({0, kX, kX + 4}, values, ndims, shapes) || (kRelu && !SizesAre({1}, values, ndims, shapes)) ||
      !SizesAre({kX + 1, kX + 5, kX + 6}, channels, ndims, shapes) || !SizesAre({kX + 2}, 4 * channels, ndims, shapes) ||
      !SizesAre({kX + 3}, 1, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = Input(params, 0), *y = Input(params, 1), *x = Input(params, kX);
  const float *gamma = Input(params, kX + 1), *saved = Input(params, kX + 2), eps = *Input(params, kX + 3);
  float *grad_x = static_cast<float *>(params[kX + 4]);
  float *grad_gamma = static_cast<float *>(params[kX + 5]), *grad_beta = static_cast<float *>(params[kX + 6]);
  ParallelFor(channels, 2 * n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      QatBatchNormChannelBackward<kRelu>(
          ChannelPlanes<const float>(grad_y, channels, plane, c), ChannelPlanes<const float>(y, channels, plane, c),
          ChannelPlanes<const float>(x, channels, plane, c), ChannelPlanes<float>(grad_x, channels, plane, c), n,
          plane, c, gamma[c], saved, channels, eps, &grad_gamma[c], &grad_beta[c]);
    }
  });
  return 0;
}

}  // namespace

namespace {

// The forward of QatBiasForward and QatBiasReluForward; see there.
template <bool kRelu>
int BiasForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const bool observed = nparam == 6;  // else x, bias -> y: no range to step
  if (nparam != 6 && nparam != 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1}, channels, ndims, shapes) || !SizesAre({nparam - 1}, n * channels * plane, ndims, shapes) ||
      (observed && (!SizesAre({2, 3}, 1, ndims, shapes) || !SizesAre({4}, 2, ndims, shapes)))) {
    return 3;
  }
  const float *x = Input(params, 0), *bias = Input(params, 1);
  float *y = static_cast<float *>(params[nparam - 1]);
  std::vector<float> lows(n * channels), highs(n * channels);  // per plane
  ParallelFor(n * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {  // x * 1 + b is x + b exactly
      AffinePlane<kRelu>(x + p * plane, plane, 1.0f, bias[p % channels], y + p * plane, &lows[p], &highs[p]);
    }
  });
  if (observed) {
    StepRange(lows, highs, Input(params, 4), static_cast<float *>(params[2]), static_cast<float *>(params[3]));
  }
  return 0;
}

}  // namespace

// A QAT convolution's bias (BatchNorm frozen and folded, or none) in one operator after the
// convolution: params: x (N, C, H, W), bias (C), act_min, act_max (1 each: the output
// observer's range), ema (2, as QatBatchNormForward's) -> y = x + bias per channel. It updates
// the output's range in place (from [min, max] of y), as QatBatchNormForward does. Without
// act_min, act_max and ema (a frozen range): x, bias -> y.
extern "C" int QatBiasForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  return BiasForward<false>(nparam, params, ndims, shapes, dtypes);
}

// The same, then max(y, 0); the range is still that before the ReLU.
extern "C" int QatBiasReluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *, void *) {
  return BiasForward<true>(nparam, params, ndims, shapes, dtypes);
}

// params: grad_y, y (QatBiasReluForward's output) -> grad_x = grad_y where y > 0, else 0, and
// grad_bias = sum(grad_x) per channel (in double, each channel by one thread)
extern "C" int QatBiasReluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 4) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  const int64_t values = n * channels * plane;
  if (!SizesAre({1, 2}, values, ndims, shapes) || !SizesAre({3}, channels, ndims, shapes)) return 3;
  const float *grad_y = Input(params, 0), *y = Input(params, 1);
  float *grad_x = static_cast<float *>(params[2]), *grad_bias = static_cast<float *>(params[3]);
  ParallelFor(channels, n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double total = 0.0, unused = 0.0;
      ChannelGradientSums(grad_y, y, nullptr, n, channels, plane, c, grad_x, &total, &unused);
      grad_bias[c] = static_cast<float>(total);
    }
  });
  return 0;
}

// A QAT convolution's BatchNorm on batch statistics (QuantConv2d._train_with_batch_statistics)
// in one operator, after the convolution with the folded, quantized weight:
// params: x (N, C, H, W: that convolution's output), gamma, beta, moving_mean, moving_variance (C),
//   eps, keep (the moving statistics' share in their update), act_scale (the input's, 1 each),
//   scales (C, the weight's), act_min, act_max (1 each: the output observer's range), ema (2:
//   decay, 1 - decay; 1 - decay = 0 where the range is frozen)
//   -> y, and for the backward (4, C): the convolution's batch mean and variance, the correction,
//      moving_variance as read.
// It also updates, in place, the moving statistics and the output's range (from the output's
// [min, max]). Nothing after it in a training step reads them: the weight fold reads the moving
// variance before it, on the path to x. Without the four Assigns and the range operator per
// layer, GhostNet's first QAT step compiled in 26 s, not 35.
// y = x * correction + the folded bias quantized at act_scale * scales, per channel; correction =
// moving std / batch std, with the batch statistics scaled back to the unfolded convolution's.
extern "C" int QatBatchNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  return QatForward<false>(nparam, params, ndims, shapes, dtypes);
}

// The same, then max(y, 0): the convolution's ReLU too; the range is still that before the ReLU.
extern "C" int QatBatchNormReluForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *, void *) {
  return QatForward<true>(nparam, params, ndims, shapes, dtypes);
}

// params: grad_y, x, gamma (C), the forward's rows for the backward (4, C), eps (1)
//   -> grad_x, grad_gamma (C), grad_beta (C) of QatBatchNormForward's y (the batch statistics
//   depend on x too; the bias's quantization passes its gradient straight through)
extern "C" int QatBatchNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  return QatBackward<false>(nparam, params, ndims, shapes, dtypes);
}

// params: grad_y, y (QatBatchNormReluForward's output), x, ... -> as above, for grad_y * (y > 0)
extern "C" int QatBatchNormReluBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *, void *) {
  return QatBackward<true>(nparam, params, ndims, shapes, dtypes);
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
      scales[c] = FoldQuantizeWeightRow(w + c * per_channel, per_channel, gamma[c], variance[c], eps, folded.data(),
                                        q + c * per_channel, &moving_std[c]);
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
      const int64_t at = c * per_channel;
      grad_gamma[c] = FoldQuantizeWeightRowGrad(grad_q + at, w + at, per_channel, gamma[c], moving_std[c], grad_w + at);
    }
  });
  return 0;
}

// params: weight (C, ...), gamma (C), beta (C), moving_mean (C), moving_variance (C), eps (1),
// act_scale (1) -> FoldQuantizeWeight's fake-quantized folded weight, the folded bias beta - gamma *
// moving_mean / moving_std fake-quantized at act_scale times the weight's scales (FakeQuantBias),
// and the moving standard deviation (C, for the gradient): a QAT layer's parameters with
// BatchNorm frozen (QuantConv2d._train_folded_on_kernels) in one operator, as the separate ones
// compute them
extern "C" int FoldBatchNormQuantize(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *, void *) {
  if (nparam != 10) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0], count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[7], shapes[7]) != count) return 3;
  if (!SizesAre({1, 2, 3, 4, 8, 9}, channels, ndims, shapes) || !SizesAre({5, 6}, 1, ndims, shapes)) return 3;
  const int64_t per_channel = count / channels;
  const float *w = Input(params, 0), *gamma = Input(params, 1), *beta = Input(params, 2);
  const float *moving_mean = Input(params, 3), *moving_variance = Input(params, 4);
  const float eps = *Input(params, 5), act_scale = *Input(params, 6);
  float *q = static_cast<float *>(params[7]), *bias = static_cast<float *>(params[8]);
  float *moving_std = static_cast<float *>(params[9]);
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    std::vector<float> folded(per_channel);
    for (int64_t c = begin; c < end; ++c) {
      const float scale = FoldQuantizeWeightRow(w + c * per_channel, per_channel, gamma[c], moving_variance[c], eps,
                                                folded.data(), q + c * per_channel, &moving_std[c]);
      const float folded_bias = beta[c] - gamma[c] * moving_mean[c] / moving_std[c];
      bias[c] = FakeQuantBiasValue(folded_bias, act_scale * scale);
    }
  });
  return 0;
}

// params: grad_q, grad_bias, weight, gamma, moving_mean, moving_std -> grad_weight, grad_gamma: those
// of FoldQuantizeWeightGrad, plus the folded bias's share of gamma's, -grad_bias / moving_std *
// moving_mean (in the order of the framework's backward). Beta's gradient is grad_bias itself.
extern "C" int FoldBatchNormQuantizeGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *, void *) {
  if (nparam != 8) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0], count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[2], shapes[2]) != count || Elements(ndims[6], shapes[6]) != count) return 3;
  if (!SizesAre({1, 3, 4, 5, 7}, channels, ndims, shapes)) return 3;
  const int64_t per_channel = count / channels;
  const float *grad_q = Input(params, 0), *grad_bias = Input(params, 1), *w = Input(params, 2);
  const float *gamma = Input(params, 3), *moving_mean = Input(params, 4), *moving_std = Input(params, 5);
  float *grad_w = static_cast<float *>(params[6]), *grad_gamma = static_cast<float *>(params[7]);
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t at = c * per_channel;
      const float from_weight =
          FoldQuantizeWeightRowGrad(grad_q + at, w + at, per_channel, gamma[c], moving_std[c], grad_w + at);
      grad_gamma[c] = from_weight + -grad_bias[c] / moving_std[c] * moving_mean[c];
    }
  });
  return 0;
}

namespace {

// A concatenation along channels: the whole (N, C1 + C2, H, W) of parts (N, C1, H, W) and
// (N, C2, H, W), each plane of the whole copied from, or computed out of, its part's plane.
struct ChannelConcat {
  int64_t n, first, second, plane;

  // From the shapes at these parameter positions; false unless they fit.
  bool Read(int *ndims, int64_t **shapes, int whole, int first_part, int second_part) {
    if (ndims[whole] != 4 || ndims[first_part] != 4 || ndims[second_part] != 4) return false;
    const int64_t *all = shapes[whole];
    for (const int64_t *part : {shapes[first_part], shapes[second_part]}) {
      if (part[0] != all[0] || part[2] != all[2] || part[3] != all[3]) return false;
    }
    n = all[0];
    first = shapes[first_part][1];
    second = shapes[second_part][1];
    plane = all[2] * all[3];
    return first > 0 && second > 0 && all[1] == first + second && n * plane > 0;
  }

  // fn(offset of a plane in the whole, whether it is in the first part, its offset in that part),
  // for every plane, in parallel.
  template <class Fn>
  void ForEachPlane(const Fn &fn) const {
    const int64_t channels = first + second;
    ParallelFor(n * channels, plane, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / channels, c = p % channels;
        if (c < first) {
          fn(p * plane, true, (b * first + c) * plane);
        } else {
          fn(p * plane, false, (b * second + c - first) * plane);
        }
      }
    });
  }
};

}  // namespace

// A ghost module's concatenation in a QAT training step (fake_quant.ConcatQuant.concat) in one
// operator: params: quantized (N, C1, H, W: the primary half, quantized in the range), cheap (N,
//   C2, H, W), primary (N, C1, H, W: the primary half before quantizing), act_min, act_max (1
//   each), ema (2: decay, 1 - decay)
//   -> (N, C1 + C2, H, W): quantized, then cheap fake-quantized in the range; the range as read (2).
// Then the range takes its step in place from [min, max] over primary and cheap together
// (RangeObserver.watch_together; none where frozen): both parts of a step sit on one grid.
extern "C" int GhostConcatQuantForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *, void *) {
  if (nparam != 8) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  ChannelConcat concat;
  if (!concat.Read(ndims, shapes, 6, 0, 1) || !SizesAre({2}, Elements(ndims[0], shapes[0]), ndims, shapes) ||
      !SizesAre({3, 4}, 1, ndims, shapes) || !SizesAre({5, 7}, 2, ndims, shapes)) {
    return 3;
  }
  const float *quantized = Input(params, 0), *cheap = Input(params, 1);
  float *act_min = static_cast<float *>(params[3]), *act_max = static_cast<float *>(params[4]);
  float *out = static_cast<float *>(params[6]), *range = static_cast<float *>(params[7]);
  const ActivationQuant quant = RangeQuant(*act_min, *act_max);
  const int64_t plane = concat.plane;
  concat.ForEachPlane([&](int64_t at, bool in_first, int64_t part_at) {
    if (in_first) {
      std::memcpy(out + at, quantized + part_at, plane * sizeof(float));
    } else {
      QuantizeRange(quant, cheap + part_at, 0, plane, out + at);
    }
  });
  range[0] = *act_min;
  range[1] = *act_max;
  std::vector<float> lows(2), highs(2);
  MinMaxOf(Input(params, 2), concat.n * concat.first * plane, &lows[0], &highs[0]);
  MinMaxOf(cheap, concat.n * concat.second * plane, &lows[1], &highs[1]);
  StepRange(lows, highs, Input(params, 5), act_min, act_max);
  return 0;
}

// params: grad_y (N, C1 + C2, H, W), cheap (N, C2, H, W), range (2: as the forward read it)
//   -> grad_quantized (N, C1, H, W: the first half of grad_y), grad_cheap (N, C2, H, W: the second
//      half where cheap passes straight through the range's quantizer, else 0)
extern "C" int GhostConcatQuantBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  ChannelConcat concat;
  if (!concat.Read(ndims, shapes, 0, 3, 1) || !SizesAre({4}, Elements(ndims[1], shapes[1]), ndims, shapes) ||
      !SizesAre({2}, 2, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = Input(params, 0), *cheap = Input(params, 1), *range = Input(params, 2);
  float *grad_quantized = static_cast<float *>(params[3]), *grad_cheap = static_cast<float *>(params[4]);
  const ActivationQuant quant = RangeQuant(range[0], range[1]);
  const int64_t plane = concat.plane;
  concat.ForEachPlane([&](int64_t at, bool in_first, int64_t part_at) {
    if (in_first) {
      std::memcpy(grad_quantized + part_at, grad_y + at, plane * sizeof(float));
    } else {
      StraightThroughRange(quant, grad_y + at, cheap + part_at, 0, plane, grad_cheap + part_at);
    }
  });
  return 0;
}
