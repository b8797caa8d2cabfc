// BatchNorm in training (batch statistics), forward and backward, as AOT custom operators.
//
// MindSpore 2.10's CPU BatchNorm and BatchNormGrad took 1.6x PyTorch's time at 224 px in a
// GhostNet training step. Here each is two passes over the tensor, per channel of an NCHW
// tensor: one for the sums (forward: of x - s and (x - s)^2 with s the channel's first value,
// so that the variance E[(x - s)^2] - E[x - s]^2 does not cancel where |mean| >> std), one
// affine. Sums are in double, each channel by one thread in a fixed order: equal to the
// framework's up to rounding, and the same on every run.
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <cstdint>

#include "batchnorm.h"
#include "common.h"

namespace {

using kernels::AllFloat32;
using kernels::BatchNormGradOperands;
using kernels::BatchNormOperands;
using kernels::ChannelPlanes;
using kernels::ChannelShape;
using kernels::ParallelFor;
using kernels::SizesAre;

// The forward of BatchNormTrainForward and BatchNormReluTrainForward (y = max(y, 0)).
template <bool kRelu>
int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 12) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!BatchNormOperands::ShapesFit(1, 8, channels, ndims, shapes)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[7]);
  const BatchNormOperands bn(params, 1, 8);
  ParallelFor(channels, n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      bn.Normalize<kRelu>(c, ChannelPlanes<const float>(x, channels, plane, c),
                          ChannelPlanes<float>(y, channels, plane, c), n, plane);
    }
  });
  return 0;
}

// The backward of both; with kRelu, params[1] is the forward's output y and the gradient
// reaching the BatchNorm is grad_y where y > 0, else 0 (written into grad_x first).
template <bool kRelu>
int Backward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  constexpr int kX = kRelu ? 2 : 1;  // the positions after grad_y (and y)
  if (nparam != kX + 7) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[kX], shapes[kX], &n, &channels, &plane)) return 3;
  const int64_t values = n * channels * plane;
  if (!SizesAre({0, kX, kX + 4}, values, ndims, shapes) || (kRelu && !SizesAre({1}, values, ndims, shapes)) ||
      !BatchNormGradOperands::ShapesFit(kX + 1, kX + 5, channels, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *y = static_cast<const float *>(params[1]);
  const float *x = static_cast<const float *>(params[kX]);
  float *grad_x = static_cast<float *>(params[kX + 4]);
  const BatchNormGradOperands bn(params, kX + 1, kX + 5);
  ParallelFor(channels, 2 * n * plane, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      bn.Backward<kRelu>(c, ChannelPlanes<const float>(grad_y, channels, plane, c),
                         ChannelPlanes<const float>(y, channels, plane, c),
                         ChannelPlanes<const float>(x, channels, plane, c),
                         ChannelPlanes<float>(grad_x, channels, plane, c), n, plane);
    }
  });
  return 0;
}

}  // namespace

// params: x (N, C, H, W), gamma, beta, moving_mean, moving_variance (C), keep (1), eps (1)
//   -> y, batch mean (C), 1 / sqrt(batch variance + eps) (C), new moving mean (C), new moving variance (C)
// y = (x - mean) / sqrt(var + eps) * gamma + beta with the biased batch variance; the moving
// statistics take the batch's share 1 - keep, the variance unbiased (N H W / (N H W - 1)), as
// MindSpore's BatchNorm does.
extern "C" int BatchNormTrainForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *, void *) {
  return Forward<false>(nparam, params, ndims, shapes, dtypes);
}

// The same, then max(y, 0): a BatchNorm and the ReLU after it.
extern "C" int BatchNormReluTrainForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *, void *) {
  return Forward<true>(nparam, params, ndims, shapes, dtypes);
}

// params: grad_y, x (N, C, H, W), gamma, mean, inv_std (C) -> grad_x, grad_gamma (C), grad_beta (C)
// of BatchNormTrainForward's y (the batch statistics depend on x too):
//   grad_beta = sum(grad_y), grad_gamma = sum(grad_y * x_hat), x_hat = (x - mean) * inv_std,
//   grad_x = gamma * inv_std * (grad_y - grad_beta / M - x_hat * grad_gamma / M), M = N H W.
extern "C" int BatchNormTrainBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                      const char **dtypes, void *, void *) {
  return Backward<false>(nparam, params, ndims, shapes, dtypes);
}

// params: grad_y, y (BatchNormReluTrainForward's output), x, gamma, mean, inv_std -> as above,
// for grad_y * (y > 0)
extern "C" int BatchNormReluTrainBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *, void *) {
  return Backward<true>(nparam, params, ndims, shapes, dtypes);
}
