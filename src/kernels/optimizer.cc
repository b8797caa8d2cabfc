// SGD with momentum over all of a network's parameters in one AOT custom operator.
//
// MindSpore's Momentum optimizer runs up to three operators per parameter (the weight decay's
// multiply and add, the loss scale's multiply, ApplyMomentum): in a GhostNet training step
// at 64 px they were 738 of the step's 1611 operators, and launching them cost more than
// running them. Here, in MindSpore's operations and order (bit for bit):
//   d = (grad + weight_decay * loss_scale * param) * (1 / loss_scale)   (no decay: grad * (1 / loss_scale))
//   moment = moment * momentum + d;  param = param - lr * moment
//
// Interface (MindSpore AOT, CPU): int F(int nparam, void **params, int *ndims,
// int64_t **shapes, const char **dtypes, void *stream, void *extra); inputs then outputs.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace {

using kernels::AllFloat32;
using kernels::Elements;
using kernels::ParallelFor;

constexpr int64_t kChunk = 16384;  // values per unit of parallel work

struct Chunk {
  int tensor;
  int64_t begin, end;
};

}  // namespace

// params: lr (1), momentum (1), 1 / loss_scale (1), weight_decay * loss_scale (P),
//         P parameters, P gradients, P moments -> done (1, set to 1)
// The parameters and moments are updated in place.
extern "C" int SgdMomentumUpdate(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam < 8 || (nparam - 5) % 3 != 0) return 1;
  if (!AllFloat32(nparam, dtypes)) return 2;
  const int count = (nparam - 5) / 3;
  if (Elements(ndims[0], shapes[0]) != 1 || Elements(ndims[1], shapes[1]) != 1 ||
      Elements(ndims[2], shapes[2]) != 1 || Elements(ndims[3], shapes[3]) != count) {
    return 3;
  }
  std::vector<Chunk> chunks;
  for (int t = 0; t < count; ++t) {
    const int64_t values = Elements(ndims[4 + t], shapes[4 + t]);
    for (int k : {count, 2 * count}) {
      if (Elements(ndims[4 + k + t], shapes[4 + k + t]) != values) return 3;
    }
    for (int64_t begin = 0; begin < values; begin += kChunk) {
      chunks.push_back({t, begin, std::min(values, begin + kChunk)});
    }
  }
  const float lr = *static_cast<const float *>(params[0]);
  const float momentum = *static_cast<const float *>(params[1]);
  const float inverse_scale = *static_cast<const float *>(params[2]);
  const float *decays = static_cast<const float *>(params[3]);
  ParallelFor(static_cast<int64_t>(chunks.size()), kChunk, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const Chunk &chunk = chunks[i];
      float *param = static_cast<float *>(params[4 + chunk.tensor]);
      const float *grad = static_cast<const float *>(params[4 + count + chunk.tensor]);
      float *moment = static_cast<float *>(params[4 + 2 * count + chunk.tensor]);
      const float decay = decays[chunk.tensor];
      if (decay != 0.0f) {
        for (int64_t j = chunk.begin; j < chunk.end; ++j) {
          moment[j] = moment[j] * momentum + (grad[j] + decay * param[j]) * inverse_scale;
          param[j] -= lr * moment[j];
        }
      } else {
        for (int64_t j = chunk.begin; j < chunk.end; ++j) {
          moment[j] = moment[j] * momentum + grad[j] * inverse_scale;
          param[j] -= lr * moment[j];
        }
      }
    }
  });
  *static_cast<float *>(params[nparam - 1]) = 1.0f;
  return 0;
}
