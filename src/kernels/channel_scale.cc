// A squeeze-excite gate's product, x * gate with gate (N, C, 1, 1) per plane of an NCHW x, and
// its backward, as AOT custom operators. The framework runs the backward as a broadcast
// multiply, a second multiply and a reduction; here it is one pass (the gate's gradient summed
// in double, each plane by one thread in a fixed order).
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <cstdint>

#include "common.h"

using kernels::AllFloat32;
using kernels::ChannelShape;
using kernels::ParallelFor;
using kernels::SizesAre;

// params: x (N, C, H, W), gate (N, C, 1, 1) -> x * gate
extern "C" int ChannelScale(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                            void *) {
  if (nparam != 3) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[0], shapes[0], &n, &channels, &plane)) return 3;
  if (!SizesAre({1}, n * channels, ndims, shapes) || !SizesAre({2}, n * channels * plane, ndims, shapes)) return 3;
  const float *x = static_cast<const float *>(params[0]);
  const float *gate = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  ParallelFor(n * channels, plane, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float g = gate[p];
      const float *in = x + p * plane;
      float *out = y + p * plane;
      for (int64_t i = 0; i < plane; ++i) out[i] = in[i] * g;
    }
  });
  return 0;
}

// params: grad_y, x (N, C, H, W), gate (N, C, 1, 1) -> grad_x = grad_y * gate,
// grad_gate = sum over the plane of grad_y * x
extern "C" int ChannelScaleGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *, void *) {
  if (nparam != 5) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  int64_t n, channels, plane;
  if (!ChannelShape(ndims[1], shapes[1], &n, &channels, &plane)) return 3;
  if (!SizesAre({2, 4}, n * channels, ndims, shapes) || !SizesAre({0, 3}, n * channels * plane, ndims, shapes)) {
    return 3;
  }
  const float *grad_y = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *gate = static_cast<const float *>(params[2]);
  float *grad_x = static_cast<float *>(params[3]);
  float *grad_gate = static_cast<float *>(params[4]);
  ParallelFor(n * channels, 2 * plane, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float g = gate[p];
      const float *dy = grad_y + p * plane;
      const float *in = x + p * plane;
      float *dx = grad_x + p * plane;
      double dot0 = 0.0, dot1 = 0.0, dot2 = 0.0, dot3 = 0.0;
      int64_t i = 0;
      for (; i + 4 <= plane; i += 4) {
        for (int k = 0; k < 4; ++k) dx[i + k] = dy[i + k] * g;
        dot0 += static_cast<double>(dy[i]) * in[i];
        dot1 += static_cast<double>(dy[i + 1]) * in[i + 1];
        dot2 += static_cast<double>(dy[i + 2]) * in[i + 2];
        dot3 += static_cast<double>(dy[i + 3]) * in[i + 3];
      }
      double dot = (dot0 + dot1) + (dot2 + dot3);
      for (; i < plane; ++i) {
        dx[i] = dy[i] * g;
        dot += static_cast<double>(dy[i]) * in[i];
      }
      grad_gate[p] = static_cast<float>(dot);
    }
  });
  return 0;
}
