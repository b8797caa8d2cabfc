// A depthwise QAT convolution with BatchNorm on batch statistics in training
// (QuantConv2d._train_with_batch_statistics_on_kernels), with the ReLU after it or not, as one
// AOT custom operator forward and one backward: the weight's fold with the moving statistics
// and its fake-quant, the convolution, and the BatchNorm side (batch moments, correction,
// quantized bias, the output range's step).
//
// Separately these are three operators forward (the fold, the convolution, the BatchNorm; four
// where the input arrives quantized and its scale is read on its own) and three backward for
// each of GhostNet's 41 depthwise layers, each with its own gradient function for the graph
// compiler to differentiate and specialize: the first QAT step's compile grows with them. All
// of it is per channel: here one thread takes a channel through the lot. Each piece is the
// separate kernels' own (qat.h, depthwise.h), in the same order: the results equal theirs bit
// for bit.
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "depthwise.h"
#include "qat.h"

namespace {

using kernels::AllFloat32;
using kernels::ChannelPlanes;
using kernels::ParallelFor;
using kernels::SizesAre;
using kernels::depthwise::Geometry;
using kernels::qat::FoldQuantizeWeightRow;
using kernels::qat::FoldQuantizeWeightRowGrad;
using kernels::qat::QatBatchNorm;
using kernels::qat::QatBatchNormChannelBackward;

const float *Input(void **params, int i) { return static_cast<const float *>(params[i]); }

// params: x (N, C, H, W: the input, fake-quantized), weight (C, 1, K, K), gamma, beta,
//   moving_mean, moving_variance (C), eps, keep, in_min, in_max (1 each: the input's range, which
//   gives its scale; read once x is computed), act_min, act_max (1 each: the output observer's
//   range), ema (2)
//   -> y (N, C, OH, OW), conv (N, C, OH, OW: the convolution's output), the folded, quantized
//      weight (C, 1, K, K), the rows for the backward (4, C): as QatBatchNormForward's.
// Like QatBatchNormForward it updates the moving statistics and the output's range in place.
template <bool kRelu>
int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 17) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  Geometry g;
  if (!kernels::depthwise::FusedGeometry(false, ndims, shapes, 0, 1, 14, 13, &g)) return 3;
  const int64_t channels = g.c, taps = g.k * g.k, plane = g.h * g.w, out_plane = g.oh * g.ow;
  if (!SizesAre({2, 3, 4, 5}, channels, ndims, shapes) || !SizesAre({6, 7, 8, 9, 10, 11}, 1, ndims, shapes) ||
      !SizesAre({12}, 2, ndims, shapes) || !SizesAre({15}, channels * taps, ndims, shapes) ||
      !SizesAre({16}, 4 * channels, ndims, shapes)) {
    return 3;
  }
  const float *x = Input(params, 0), *weight = Input(params, 1), *gamma = Input(params, 2);
  float *moving_variance = static_cast<float *>(params[5]);
  const float eps = *Input(params, 6);
  float act_scale, zero_point;
  kernels::qat::ActivationQParams(*Input(params, 8), *Input(params, 9), &act_scale, &zero_point);
  const QatBatchNorm bn{gamma, Input(params, 3), static_cast<float *>(params[4]), moving_variance, eps,
                        *Input(params, 7), act_scale, static_cast<float *>(params[16]), channels};
  float *y = static_cast<float *>(params[13]), *conv = static_cast<float *>(params[14]);
  float *quantized_weight = static_cast<float *>(params[15]);
  std::vector<float> lows(g.n * channels), highs(g.n * channels);  // per plane
  ParallelFor(channels, g.n * out_plane * (taps + 3), [&](int64_t begin, int64_t end) {
    kernels::depthwise::Workspace workspace(g);
    std::vector<float> folded(taps);
    for (int64_t c = begin; c < end; ++c) {
      float moving_std;  // the fold reads the moving variance before the BatchNorm steps it
      const float scale = FoldQuantizeWeightRow(weight + c * taps, taps, gamma[c], moving_variance[c], eps,
                                                folded.data(), quantized_weight + c * taps, &moving_std);
      const ChannelPlanes<float> conv_planes(conv, channels, out_plane, c);
      kernels::depthwise::ConvolveChannel(ChannelPlanes<const float>(x, channels, plane, c),
                                          quantized_weight + c * taps, g, &workspace, conv_planes);
      bn.Normalize<kRelu>(c, conv_planes, ChannelPlanes<float>(y, channels, out_plane, c), g.n, out_plane, scale,
                          &lows[c * g.n], &highs[c * g.n]);
    }
  });
  kernels::qat::StepRange(lows, highs, Input(params, 12), static_cast<float *>(params[10]),
                          static_cast<float *>(params[11]));
  return 0;
}

// params: grad_y, [y (the forward's, with kRelu),] conv, x, the quantized weight, weight, gamma,
//   the forward's rows (4, C), eps -> grad_x (N, C, H, W), grad_weight (C, 1, K, K), grad_gamma (C:
//   the BatchNorm's share and the fold's), grad_beta (C)
template <bool kRelu>
int Backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr int kConv = kRelu ? 2 : 1;  // the positions after grad_y (and y)
  if (nparam != kConv + 11) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  Geometry g;
  if (!kernels::depthwise::FusedGeometry(false, ndims, shapes, kConv + 1, kConv + 3, kConv, 0, &g)) return 3;
  const int64_t channels = g.c, taps = g.k * g.k, plane = g.h * g.w, out_plane = g.oh * g.ow;
  if ((kRelu && !SizesAre({1}, g.n * channels * out_plane, ndims, shapes)) ||
      !SizesAre({kConv + 2, kConv + 8}, channels * taps, ndims, shapes) ||
      !SizesAre({kConv + 7}, g.n * channels * plane, ndims, shapes) ||
      !SizesAre({kConv + 4, kConv + 9, kConv + 10}, channels, ndims, shapes) ||
      !SizesAre({kConv + 5}, 4 * channels, ndims, shapes) || !SizesAre({kConv + 6}, 1, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = Input(params, 0), *y = kRelu ? Input(params, 1) : nullptr, *conv = Input(params, kConv);
  const float *x = Input(params, kConv + 1), *quantized_weight = Input(params, kConv + 2);
  const float *weight = Input(params, kConv + 3), *gamma = Input(params, kConv + 4);
  const float *saved = Input(params, kConv + 5), eps = *Input(params, kConv + 6);
  float *grad_x = static_cast<float *>(params[kConv + 7]), *grad_weight = static_cast<float *>(params[kConv + 8]);
  float *grad_gamma = static_cast<float *>(params[kConv + 9]), *grad_beta = static_cast<float *>(params[kConv + 10]);
  ParallelFor(channels, g.n * out_plane * (2 * taps + 4), [&](int64_t begin, int64_t end) {
    // the convolution's gradient, one channel's planes of it; at stride 1 it goes into grad_x's
    // planes, where the convolution's backward then runs in place (BackwardChannel reads each
    // plane whole before it writes the input gradient)
    kernels::depthwise::Workspace workspace(g);
    std::vector<float> scratch(g.stride == 1 ? 0 : g.n * out_plane), grad_quantized(taps);
    for (int64_t c = begin; c < end; ++c) {
      const ChannelPlanes<float> grad_conv = g.stride == 1 ? ChannelPlanes<float>(grad_x, channels, plane, c)
                                                           : ChannelPlanes<float>(scratch.data(), 1, out_plane, 0);
      float batchnorm_grad_gamma;
      QatBatchNormChannelBackward<kRelu>(ChannelPlanes<const float>(grad_y, channels, out_plane, c),
                                         ChannelPlanes<const float>(y, channels, out_plane, c),
                                         ChannelPlanes<const float>(conv, channels, out_plane, c), grad_conv, g.n,
                                         out_plane, c, gamma[c], saved, channels, eps, &batchnorm_grad_gamma,
                                         &grad_beta[c]);
      kernels::depthwise::BackwardChannel(ChannelPlanes<const float>(x, channels, plane, c), grad_conv,
                                          quantized_weight + c * taps, g, &workspace,
                                          ChannelPlanes<float>(grad_x, channels, plane, c), grad_quantized.data());
      // the moving std as the fold computed it, from the moving variance it read
      const float moving_std = std::sqrt(saved[3 * channels + c] + eps);
      const float fold_grad_gamma = FoldQuantizeWeightRowGrad(grad_quantized.data(), weight + c * taps, taps,
                                                              gamma[c], moving_std, grad_weight + c * taps);
      grad_gamma[c] = batchnorm_grad_gamma + fold_grad_gamma;  // gamma's two uses, summed as the graph sums them
    }
  });
  return 0;
}

}  // namespace

#define QAT_DEPTHWISE_ENTRY(name, function, relu)                                                                  \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) { \
    return function<relu>(nparam, params, ndims, shapes, dtypes);                                                   \
  }

QAT_DEPTHWISE_ENTRY(QatDepthwiseBatchNormForward, Forward, false)
QAT_DEPTHWISE_ENTRY(QatDepthwiseBatchNormReluForward, Forward, true)
QAT_DEPTHWISE_ENTRY(QatDepthwiseBatchNormBackward, Backward, false)
QAT_DEPTHWISE_ENTRY(QatDepthwiseBatchNormReluBackward, Backward, true)
