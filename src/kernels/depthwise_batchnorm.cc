// A depthwise convolution and the BatchNorm after it (batch statistics) in training, with the
// ReLU after them or not, as one AOT custom operator forward and one backward; in a ghost
// module, with the concatenation after the cheap branch too:
//   DepthwiseBatchNorm*: y = BatchNorm(depthwise(x)) [then ReLU];
//   GhostCheap*:         out = concat(x, BatchNorm(depthwise(x)) [then ReLU]), stride 1.
//
// In the framework a ghost module's cheap branch is a depthwise convolution, a BatchNorm and
// a concatenation, and in the backward the concatenation's two slices, a BatchNorm backward, a
// depthwise backward and the sum of the input's two gradients: seven operators and four
// passes over memory, for work that is all per channel. Here one thread takes a channel
// through all of it. Each piece is the kernels' own (depthwise.h, batchnorm.h), in the same
// order: the results equal the separate kernels' bit for bit.
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "batchnorm.h"
#include "common.h"
#include "depthwise.h"

namespace {

using kernels::AllFloat32;
using kernels::ChannelPlanes;
using kernels::ParallelFor;
using kernels::SizesAre;
using kernels::depthwise::Geometry;

// params: x (N, C, H, W), weight (C, 1, K, K), gamma, beta, moving_mean, moving_variance (C),
// keep (1), eps (1) -> out (N, C, OH, OW), or with kConcat (N, 2C, H, W); conv (N, C, OH, OW:
// the convolution's output, for the backward); batch mean (C); inv_std (C); new moving mean
// (C); new moving variance (C). The statistics as BatchNormTrainForward's (batchnorm.cc).
template <bool kRelu, bool kConcat>
int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 14) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  Geometry g;
  if (!kernels::depthwise::FusedGeometry(kConcat, ndims, shapes, 0, 1, 9, 8, &g)) return 3;
  const int64_t channels = g.c, plane = g.h * g.w, out_plane = g.oh * g.ow;
  if (!kernels::BatchNormOperands::ShapesFit(2, 10, channels, ndims, shapes)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[8]);
  float *conv = static_cast<float *>(params[9]);
  const kernels::BatchNormOperands bn(params, 2, 10);
  const int64_t out_channels = kConcat ? 2 * channels : channels, offset = kConcat ? channels : 0;
  ParallelFor(channels, g.n * out_plane * (g.k * g.k + 3), [&](int64_t begin, int64_t end) {
    kernels::depthwise::Workspace workspace(g);
    for (int64_t c = begin; c < end; ++c) {
      const ChannelPlanes<const float> in(x, channels, plane, c);
      kernels::depthwise::ConvolveChannel(in, weight + c * g.k * g.k, g, &workspace,
                                          ChannelPlanes<float>(conv, channels, out_plane, c));
      const ChannelPlanes<float> copied(out, out_channels, plane, c);
      for (int64_t b = 0; kConcat && b < g.n; ++b) std::memcpy(copied[b], in[b], plane * sizeof(float));
      bn.Normalize<kRelu>(c, ChannelPlanes<const float>(conv, channels, out_plane, c),
                          ChannelPlanes<float>(out, out_channels, out_plane, offset + c), g.n, out_plane);
    }
  });
  return 0;
}

// params: grad_out, [out (the forward's, with kRelu),] conv, x, weight, gamma, mean, inv_std ->
// grad_x (N, C, H, W), grad_weight (C, 1, K, K), grad_gamma (C), grad_beta (C)
template <bool kRelu, bool kConcat>
int Backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr int kConv = kRelu ? 2 : 1;  // the positions after grad_out (and out)
  if (nparam != kConv + 10) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  Geometry g;
  if (!kernels::depthwise::FusedGeometry(kConcat, ndims, shapes, kConv + 1, kConv + 2, kConv, 0, &g)) return 3;
  const int64_t channels = g.c, plane = g.h * g.w, out_plane = g.oh * g.ow;
  if (!SizesAre({kConv + 6}, g.n * channels * plane, ndims, shapes) ||
      (kRelu && !SizesAre({1}, kernels::Elements(ndims[0], shapes[0]), ndims, shapes)) ||
      !kernels::BatchNormGradOperands::ShapesFit(kConv + 3, kConv + 8, channels, ndims, shapes) ||
      !SizesAre({kConv + 7}, channels * g.k * g.k, ndims, shapes)) {
    return 3;
  }
  const float *grad_out = static_cast<const float *>(params[0]);
  const float *out = kRelu ? static_cast<const float *>(params[1]) : nullptr;
  const float *conv = static_cast<const float *>(params[kConv]);
  const float *x = static_cast<const float *>(params[kConv + 1]);
  const float *weight = static_cast<const float *>(params[kConv + 2]);
  float *grad_x = static_cast<float *>(params[kConv + 6]);
  float *grad_weight = static_cast<float *>(params[kConv + 7]);
  const kernels::BatchNormGradOperands bn(params, kConv + 3, kConv + 8);
  const int64_t out_channels = kConcat ? 2 * channels : channels, offset = kConcat ? channels : 0;
  ParallelFor(channels, g.n * out_plane * (2 * g.k * g.k + 4), [&](int64_t begin, int64_t end) {
    // the convolution's gradient, one channel's planes of it; at stride 1 it goes into grad_x's
    // planes, where the convolution's backward then runs in place (BackwardChannel reads each
    // plane whole before it writes the input gradient)
    kernels::depthwise::Workspace workspace(g);
    std::vector<float> scratch(g.stride == 1 ? 0 : g.n * out_plane);
    for (int64_t c = begin; c < end; ++c) {
      const ChannelPlanes<float> grad_conv = g.stride == 1 ? ChannelPlanes<float>(grad_x, channels, plane, c)
                                                           : ChannelPlanes<float>(scratch.data(), 1, out_plane, 0);
      bn.Backward<kRelu>(c, ChannelPlanes<const float>(grad_out, out_channels, out_plane, offset + c),
                         ChannelPlanes<const float>(out, out_channels, out_plane, offset + c),
                         ChannelPlanes<const float>(conv, channels, out_plane, c), grad_conv, g.n, out_plane);
      const ChannelPlanes<float> grad_in(grad_x, channels, plane, c);
      kernels::depthwise::BackwardChannel(ChannelPlanes<const float>(x, channels, plane, c), grad_conv,
                                          weight + c * g.k * g.k, g, &workspace, grad_in,
                                          grad_weight + c * g.k * g.k);
      const ChannelPlanes<const float> direct(grad_out, out_channels, plane, c);
      for (int64_t b = 0; kConcat && b < g.n; ++b) {  // the input's own path through the concatenation
        float *sum = grad_in[b];
        const float *d = direct[b];
        for (int64_t i = 0; i < plane; ++i) sum[i] += d[i];
      }
    }
  });
  return 0;
}

}  // namespace

#define DEPTHWISE_BATCHNORM_ENTRY(name, function, relu, concat)                                                   \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) { \
    return function<relu, concat>(nparam, params, ndims, shapes, dtypes);                                          \
  }

DEPTHWISE_BATCHNORM_ENTRY(DepthwiseBatchNormTrainForward, Forward, false, false)
DEPTHWISE_BATCHNORM_ENTRY(DepthwiseBatchNormReluTrainForward, Forward, true, false)
DEPTHWISE_BATCHNORM_ENTRY(GhostCheapTrainForward, Forward, false, true)
DEPTHWISE_BATCHNORM_ENTRY(GhostCheapReluTrainForward, Forward, true, true)
DEPTHWISE_BATCHNORM_ENTRY(DepthwiseBatchNormTrainBackward, Backward, false, false)
DEPTHWISE_BATCHNORM_ENTRY(DepthwiseBatchNormReluTrainBackward, Backward, true, false)
DEPTHWISE_BATCHNORM_ENTRY(GhostCheapTrainBackward, Backward, false, true)
DEPTHWISE_BATCHNORM_ENTRY(GhostCheapReluTrainBackward, Backward, true, true)
