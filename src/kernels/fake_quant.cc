// The fake-quant arithmetic of src/quant/primitives.py in one pass each, as AOT custom operators.
//
// The framework spends seven elementwise passes (clamp, divide, add, floor, multiply and the
// straight-through sum) on each activation and two more reductions on each observed range;
// here each is one pass. Results equal the framework's bit for bit: the same float32
// operations in the same order, without fused multiply-adds (-ffp-contract=off), and the
// straight-through sum c + (q - c) is q exactly (Sterbenz: |q - c| <= scale / 2).
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using kernels::IsFloat32;
using kernels::ParallelFor;

using kernels::ActivationQuant;

// Mirrors primitives.py: WEIGHT_QMIN/WEIGHT_QMAX and _TINY (ACT_QMIN/ACT_QMAX: ActivationQuant).
constexpr float kWeightQMin = -128.0f, kWeightQMax = 127.0f;
constexpr float kTiny = 1e-12f;

typedef float Floats8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

int64_t Elements(int ndim, const int64_t *shape) {
  int64_t count = 1;
  for (int i = 0; i < ndim; ++i) count *= shape[i];
  return count;
}

bool ScalarFloats(int first, int last, int *ndims, int64_t **shapes, const char **dtypes) {
  for (int i = first; i <= last; ++i) {
    if (!IsFloat32(dtypes[i]) || Elements(ndims[i], shapes[i]) != 1) return false;
  }
  return true;
}

}  // namespace

// params: x, scale (one float), zero_point (one float, an integer value) -> fake-quantized x
extern "C" int FakeQuantActivation(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 4) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[3]) || !ScalarFloats(1, 2, ndims, shapes, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (Elements(ndims[3], shapes[3]) != count) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const ActivationQuant quant(*static_cast<const float *>(params[1]), *static_cast<const float *>(params[2]));
  float *y = static_cast<float *>(params[3]);
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    const ActivationQuant q = quant;  // a local copy: the loop vectorizes
    for (int64_t i = begin; i < end; ++i) y[i] = q(x[i]);
  });
  return 0;
}

// params: grad_y, x, scale, zero_point -> grad_x: grad_y where x lies in the representable
// range (bounds included), else 0: the straight-through estimator
extern "C" int FakeQuantActivationGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[1]) || !IsFloat32(dtypes[4]) ||
      !ScalarFloats(2, 3, ndims, shapes, dtypes)) return 2;
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (Elements(ndims[1], shapes[1]) != count || Elements(ndims[4], shapes[4]) != count) return 3;
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const ActivationQuant quant(*static_cast<const float *>(params[2]), *static_cast<const float *>(params[3]));
  float *grad_x = static_cast<float *>(params[4]);
  ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    const ActivationQuant q = quant;
    for (int64_t i = begin; i < end; ++i) grad_x[i] = q.Passes(x[i]) ? grad_y[i] : 0.0f;
  });
  return 0;
}

// params: x -> (2,) [min(x), max(x)]; NaN propagates
extern "C" int MinMax(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                      void *) {
  if (nparam != 2) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[1])) return 2;
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
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[1]) || !IsFloat32(dtypes[2])) return 2;
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
      const float *row = w + c * per_channel;
      float largest = 0.0f;
      for (int64_t i = 0; i < per_channel; ++i) largest = std::max(largest, std::fabs(row[i]));
      const float scale = std::max(largest / kWeightQMax, kTiny);
      float *out = q + c * per_channel;
      for (int64_t i = 0; i < per_channel; ++i) {
        const float integer = std::min(std::max(std::floor(row[i] / scale + 0.5f), kWeightQMin), kWeightQMax);
        out[i] = integer * scale;
      }
      scales[c] = scale;
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
  for (int i = 0; i < nparam; ++i) {
    if (!IsFloat32(dtypes[i])) return 2;
  }
  if (ndims[0] < 1) return 3;
  const int64_t channels = shapes[0][0];
  const int64_t count = Elements(ndims[0], shapes[0]);
  if (channels == 0 || Elements(ndims[inputs], shapes[inputs]) != count) return 3;
  for (int i : {1, inputs + 1}) {
    if (Elements(ndims[i], shapes[i]) != channels) return 3;
  }
  for (int i : {2, 3, inputs + 2, inputs + 3}) {
    if (Elements(ndims[i], shapes[i]) != 1) return 3;
  }
  if (batchnorm) {
    for (int i : {4, 5, 6}) {
      if (Elements(ndims[i], shapes[i]) != channels) return 3;
    }
    if (Elements(ndims[7], shapes[7]) != 1) return 3;
  }
  const auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  float *weight_out = static_cast<float *>(params[inputs]);
  float *bias_out = static_cast<float *>(params[inputs + 1]);
  float *scale_out = static_cast<float *>(params[inputs + 2]);
  float *zero_point_out = static_cast<float *>(params[inputs + 3]);
  float act_scale, zero_point;
  ActivationQParams(*in(2), *in(3), &act_scale, &zero_point);
  const int64_t per_channel = count / channels;
  ParallelFor(channels, per_channel, [&](int64_t begin, int64_t end) {
    std::vector<float> folded(per_channel);
    for (int64_t c = begin; c < end; ++c) {
      const float *row = in(0) + c * per_channel;
      float bias = in(1)[c];
      if (batchnorm) {
        const float gamma = in(4)[c], mean = in(5)[c], std = std::sqrt(in(6)[c] + *in(7));
        const float factor = gamma / std;
        for (int64_t i = 0; i < per_channel; ++i) folded[i] = row[i] * factor;
        bias = bias - gamma * mean / std;
      } else {
        std::copy(row, row + per_channel, folded.begin());
      }
      float largest = 0.0f;
      for (int64_t i = 0; i < per_channel; ++i) largest = std::max(largest, std::fabs(folded[i]));
      const float scale = std::max(largest / kWeightQMax, kTiny);
      float *out = weight_out + c * per_channel;
      for (int64_t i = 0; i < per_channel; ++i) {
        out[i] = std::min(std::max(std::floor(folded[i] / scale + 0.5f), kWeightQMin), kWeightQMax) * scale;
      }
      const float bias_scale = act_scale * scale;
      bias_out[c] = bias + (std::floor(bias / bias_scale + 0.5f) * bias_scale - bias);
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
