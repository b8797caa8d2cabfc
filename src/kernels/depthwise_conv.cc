// Depthwise 2-D convolution for MindSpore's CPU backend, as AOT custom operators.
//
// float32, NCHW input, weight (C, 1, K, K), symmetric padding K / 2, stride 1 or 2. The
// stride is not passed: each function recovers it from the shapes it is given.
// MindSpore's CPU Conv2D sends depthwise convolutions to oneDNN's reference kernel; a
// plane-by-plane loop over a padded copy runs tens of times faster (depthwise.h; channels of
// small planes in training with the batch innermost).
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then output.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "depthwise.h"

namespace {

using kernels::ChannelPlanes;
using kernels::IsFloat32;
using kernels::ParallelFor;
using kernels::depthwise::BackwardChannel;
using kernels::depthwise::ConvolvePadded;
using kernels::depthwise::Geometry;
using kernels::depthwise::InnerCols;
using kernels::depthwise::InnerRows;
using kernels::depthwise::MakeGeometry;
using kernels::depthwise::PadPlane;
using kernels::depthwise::Workspace;

// PadPlane of the plane fake-quantized to uint8 (for an int8 layer's input, in eval).
void PadPlaneQuantized(const float *src, const Geometry &g, const kernels::ActivationQuant &quant, float *dst) {
  std::fill(dst, dst + g.ph * g.pw, 0.0f);
  const kernels::ActivationQuant q = quant;
  const int64_t rows = InnerRows(g), cols = InnerCols(g);
  for (int64_t y = 0; y < rows; ++y) {
    const float *in = src + y * g.w;
    float *out = dst + (y + g.pad) * g.pw + g.pad;
    for (int64_t x = 0; x < cols; ++x) out[x] = q(in[x]);
  }
}

// y = conv(x, w) [+ b] [then ReLU]; params: x, w, [b, [scale, zero_point,]] y. With
// quantized_input, x is fake-quantized to uint8 (scale, zero_point) as it is read.
int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool has_bias, bool relu,
            bool quantized_input = false) {
  Geometry g;
  const int out = quantized_input ? 5 : has_bias ? 3 : 2;
  if (nparam != out + 1 || ndims[0] != 4 || ndims[1] != 4 || ndims[out] != 4) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[1]) || (has_bias && !IsFloat32(dtypes[2]))) return 2;
  if (quantized_input && (!IsFloat32(dtypes[3]) || !IsFloat32(dtypes[4]))) return 2;
  if (quantized_input && (kernels::Elements(ndims[3], shapes[3]) != 1 || kernels::Elements(ndims[4], shapes[4]) != 1)) {
    return 3;
  }
  if (!MakeGeometry(shapes[0], shapes[1], shapes[out], &g)) return 3;
  if (has_bias && (ndims[2] != 1 || shapes[2][0] != g.c)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = has_bias ? static_cast<const float *>(params[2]) : nullptr;
  const kernels::ActivationQuant quant(quantized_input ? *static_cast<const float *>(params[3]) : 1.0f,
                                       quantized_input ? *static_cast<const float *>(params[4]) : 0.0f);
  float *y = static_cast<float *>(params[out]);
  ParallelFor(g.n * g.c, g.oh * g.ow * g.k * g.k, [&](int64_t begin, int64_t end) {
    std::vector<float> padded(g.ph * g.pw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.c;
      const float bias = b ? b[c] : 0.0f;
      if (quantized_input) PadPlaneQuantized(x + p * g.h * g.w, g, quant, padded.data());
      else PadPlane(x + p * g.h * g.w, g, padded.data());
      ConvolvePadded(padded.data(), w + c * g.k * g.k, bias, relu, g, y + p * g.oh * g.ow);
    }
  });
  return 0;
}

}  // namespace

// params: x (N, C, H, W), weight (C, 1, K, K) -> y (N, C, OH, OW)
extern "C" int DepthwiseForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *, void *) {
  return Forward(nparam, params, ndims, shapes, dtypes, false, false);
}

// params: x, weight, bias (C) -> y; with BatchNorm folded into weight and bias
extern "C" int DepthwiseBiasForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  return Forward(nparam, params, ndims, shapes, dtypes, true, false);
}

// params: x, weight, bias (C) -> max(y, 0)
extern "C" int DepthwiseBiasReluForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *, void *) {
  return Forward(nparam, params, ndims, shapes, dtypes, true, true);
}

// params: x, weight, bias (C), scale, zero_point (one float each) -> conv(fake-quantized x) + bias;
// an int8 layer in eval, its input quantized as it is read
extern "C" int DepthwiseQuantizedInputForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                              const char **dtypes, void *, void *) {
  return Forward(nparam, params, ndims, shapes, dtypes, true, false, true);
}

// params: as above -> max(conv(fake-quantized x) + bias, 0)
extern "C" int DepthwiseQuantizedInputReluForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                                  const char **dtypes, void *, void *) {
  return Forward(nparam, params, ndims, shapes, dtypes, true, true, true);
}

// params: grad_y (N, C, OH, OW), weight (C, 1, K, K), x (N, C, H, W) -> grad_x (N, C, H, W),
// grad_weight (C, 1, K, K). Both gradients in one pass over the planes: each channel belongs
// to one thread, which sums its weight gradient over the batch (no shared writes) and reads
// each gradient plane once for both (depthwise.h: BackwardChannel).
extern "C" int DepthwiseBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 5) return 1;
  for (int i = 0; i < 5; ++i) {
    if (ndims[i] != 4) return 1;
    if (!IsFloat32(dtypes[i])) return 2;
  }
  Geometry g;
  if (!MakeGeometry(shapes[2], shapes[1], shapes[0], &g)) return 3;
  for (int i = 0; i < 4; ++i) {
    if (shapes[3][i] != shapes[2][i] || shapes[4][i] != shapes[1][i]) return 3;
  }
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *x = static_cast<const float *>(params[2]);
  float *grad_x = static_cast<float *>(params[3]);
  float *grad_w = static_cast<float *>(params[4]);
  ParallelFor(g.c, 2 * g.n * g.oh * g.ow * g.k * g.k, [&](int64_t begin, int64_t end) {
    Workspace workspace(g);
    for (int64_t c = begin; c < end; ++c) {
      BackwardChannel(ChannelPlanes<const float>(x, g.c, g.h * g.w, c),
                      ChannelPlanes<const float>(grad_y, g.c, g.oh * g.ow, c), w + c * g.k * g.k, g, &workspace,
                      ChannelPlanes<float>(grad_x, g.c, g.h * g.w, c), grad_w + c * g.k * g.k);
    }
  });
  return 0;
}
