"""The fake-quant arithmetic as compiled CPU operators (``src/kernels/fake_quant.cc``).

:class:`FakeQuantKernels` holds them; the int8 layers and observers of :mod:`src.quant` take
one as ``fast_quant`` (set by :func:`src.kernels.enable_fast_cpu_path`) and call it where
they would otherwise compose framework operators. The fake-quant of activations, weights and
biases and the eval parameters equal the framework's bit for bit; batch statistics, the
BatchNorm fold and the gradients that sum are computed in double, so they differ from the
framework's float sums by rounding, and are the same on every run.
"""
import mindspore.nn as nn
import mindspore.ops as ops

from src.graph_ops import item
from src.kernels.library import build_kernel_library

_kernels = {}


class FakeQuantKernels(nn.Cell):
    """``activation(x, scale, zero_point)``: x quantize-dequantized to uint8, gradient passed
    straight through inside the representable range; ``weight(w)``: ``(fake-quantized w,
    per-output-channel scales)``, gradient passed straight through; ``min_max(x)``: ``[min,
    max]`` of x, shape (2,), no gradient.

    For QAT, each replacing tens of operators on tiny tensors: ``range_ema(x, act_min,
    act_max, ema)``: an observer's next moving range; ``range_widen(x, act_min, act_max)``:
    the range widened to cover x (calibrating, no gradient); ``activation_in_range(x, act_min,
    act_max)``: ``(x fake-quantized with that range's scale and zero point, the scale, the
    range as read)``; ``activation_observed(x, act_min, act_max, ema)``: the same after the
    range's step on x, taken in place (an observed input in training);
    ``activation_scale(x, act_min, act_max)``: that scale alone, read once x is computed
    (x arrives quantized; it is not read); ``ghost_concat(quantized, cheap,
    primary, act_min, act_max, ema)``: ``(a ghost module's output: quantized, then cheap
    fake-quantized in the range, the range as read)``, then the range's step over primary and
    cheap, in place (:meth:`src.quant.ConcatQuant.concat`);
    ``bias(bias, act_scale, scales)``: the bias fake-quantized at the accumulator's scale;
    ``fold_weight(weight, gamma, moving_variance, eps)``: ``(the weight folded with the moving
    statistics and fake-quantized, its scales, the moving std as read)``, with gradient to
    weight and gamma; ``fold_batchnorm(weight, gamma, beta, moving_mean, moving_variance, eps,
    act_scale)``: ``(that weight, the folded bias fake-quantized at act_scale times its scales,
    the moving std)``, with gradient to weight, gamma and beta (BatchNorm frozen: the moving
    statistics must not change in the step); ``batchnorm(x, gamma, beta, moving_mean, moving_variance, eps, keep,
    act_scale, scales, act_min, act_max, ema)``: the BatchNorm of
    :meth:`src.quant.QuantConv2d._train_with_batch_statistics` on the convolution's output x,
    one operator forward and one backward: ``(output, what the backward reads)``, with gradient
    to x, gamma and beta; it updates the moving statistics and the output observer's range
    (``act_min``, ``act_max``, with ``ema`` as :class:`src.quant.RangeObserver` holds it) in
    place; ``batchnorm_relu``: the same with the ReLU after it (the range is still taken
    before it); ``add_bias_relu(x, bias)``: ``max(x + bias, 0)`` per channel, with gradient
    to x and bias; ``add_bias_observing(x, bias, act_min, act_max, ema)``: ``x + bias``, the
    output range's step in place; ``add_bias_relu_observing``: the same with the ReLU after it.

    For eval, no gradient: ``eval_params(weight, bias, act_min, act_max)`` and
    ``eval_params_batchnorm(weight, beta, act_min, act_max, gamma, moving_mean,
    moving_variance, eps)``: ``(fake-quantized weight, fake-quantized bias, input scale (1,),
    input zero point (1,))`` with BatchNorm folded, all of a layer's parameter arithmetic in
    one operator.
    """

    def __init__(self, library):
        super().__init__()
        activation_grad = ops.Custom(f"{library}:FakeQuantActivationGrad",
                                     out_shape=lambda grad, x, scale, zero_point: x,
                                     out_dtype=lambda grad, x, scale, zero_point: x, func_type="aot")

        def activation_bprop(x, scale, zero_point, out, grad):
            return activation_grad(grad, x, scale, zero_point), ops.zeros_like(scale), ops.zeros_like(zero_point)

        def weight_bprop(weight, out, grad):
            return (grad[0],)

        def min_max_bprop(x, out, grad):
            return (ops.zeros_like(x),)

        self.activation = ops.Custom(f"{library}:FakeQuantActivation", out_shape=lambda x, scale, zero_point: x,
                                     out_dtype=lambda x, scale, zero_point: x, func_type="aot",
                                     bprop=activation_bprop)
        self.weight = ops.Custom(f"{library}:FakeQuantWeight", out_shape=lambda w: (w, [w[0]]),
                                 out_dtype=lambda w: (w, w), func_type="aot", bprop=weight_bprop)
        activation_in_range_grad = ops.Custom(f"{library}:FakeQuantActivationInRangeGrad",
                                              out_shape=lambda grad, x, used_range: x,
                                              out_dtype=lambda grad, x, used_range: x, func_type="aot")

        def activation_in_range_bprop(x, low, high, out, grad):
            # out[2]: the range as the forward read it (it may have taken its step in place since)
            return activation_in_range_grad(grad[0], x, out[2]), ops.zeros_like(low), ops.zeros_like(high)

        def activation_observed_bprop(x, low, high, ema, out, grad):
            return activation_in_range_bprop(x, low, high, out, grad) + (ops.zeros_like(ema),)

        self.activation_in_range = ops.Custom(f"{library}:FakeQuantActivationInRange",
                                              out_shape=lambda x, low, high: (x, [1], [2]),
                                              out_dtype=lambda x, low, high: (x, x, x), func_type="aot",
                                              bprop=activation_in_range_bprop)
        self.activation_observed = ops.Custom(f"{library}:FakeQuantActivationObserved",
                                              out_shape=lambda x, low, high, ema: (x, [1], [2]),
                                              out_dtype=lambda x, low, high, ema: (x, x, x), func_type="aot",
                                              bprop=activation_observed_bprop)
        self.ghost_concat = _ghost_concat_op(library)

        def scale_bprop(x, low, high, out, grad):
            return ops.zeros_like(x), ops.zeros_like(low), ops.zeros_like(high)

        self.activation_scale = ops.Custom(f"{library}:ActivationScale", out_shape=lambda x, low, high: low,
                                           out_dtype=lambda x, low, high: low, func_type="aot", bprop=scale_bprop)

        def range_ema_bprop(x, low, high, ema, out, grad):
            return ops.zeros_like(x), ops.zeros_like(low), ops.zeros_like(high), ops.zeros_like(ema)

        self.range_ema = ops.Custom(f"{library}:RangeEma", out_shape=lambda x, low, high, ema: (low, high),
                                    out_dtype=lambda x, low, high, ema: (low, high), func_type="aot",
                                    bprop=range_ema_bprop)
        self.range_widen = ops.Custom(f"{library}:RangeWiden", out_shape=lambda x, low, high: (low, high),
                                      out_dtype=lambda x, low, high: (low, high), func_type="aot")

        def bias_bprop(bias, act_scale, scales, out, grad):
            return grad, ops.zeros_like(act_scale), ops.zeros_like(scales)

        self.bias = ops.Custom(f"{library}:FakeQuantBias", out_shape=lambda bias, act_scale, scales: bias,
                               out_dtype=lambda bias, act_scale, scales: bias, func_type="aot", bprop=bias_bprop)

        fold_weight_grad = ops.Custom(f"{library}:FoldQuantizeWeightGrad",
                                      out_shape=lambda grad, w, gamma, std: (w, gamma),
                                      out_dtype=lambda grad, w, gamma, std: (w, w), func_type="aot")

        def fold_weight_bprop(weight, gamma, moving_variance, eps, out, grad):
            # out[2]: the moving standard deviation as the forward read it
            grad_weight, grad_gamma = fold_weight_grad(grad[0], weight, gamma, out[2])
            return grad_weight, grad_gamma, ops.zeros_like(moving_variance), ops.zeros_like(eps)

        self.fold_weight = ops.Custom(f"{library}:FoldQuantizeWeight",
                                      out_shape=lambda w, gamma, var, eps: (w, gamma, gamma),
                                      out_dtype=lambda w, gamma, var, eps: (w, w, w), func_type="aot",
                                      bprop=fold_weight_bprop)
        fold_batchnorm_grad = ops.Custom(f"{library}:FoldBatchNormQuantizeGrad",
                                         out_shape=lambda grad_q, grad_bias, w, gamma, mean, std: (w, gamma),
                                         out_dtype=lambda grad_q, grad_bias, w, *rest: (w, w), func_type="aot")

        def fold_batchnorm_bprop(weight, gamma, beta, moving_mean, moving_variance, eps, act_scale, out, grad):
            grads = fold_batchnorm_grad(item(grad, 0), item(grad, 1), weight, gamma, moving_mean, item(out, 2))
            return (item(grads, 0), item(grads, 1), item(grad, 1), ops.zeros_like(moving_mean),
                    ops.zeros_like(moving_variance), ops.zeros_like(eps), ops.zeros_like(act_scale))

        self.fold_batchnorm = ops.Custom(f"{library}:FoldBatchNormQuantize",
                                         out_shape=lambda w, gamma, *rest: (w, gamma, gamma),
                                         out_dtype=lambda w, *rest: (w, w, w), func_type="aot",
                                         bprop=fold_batchnorm_bprop)
        self.batchnorm, self.batchnorm_relu = (_qat_batchnorm_op(library, relu) for relu in (False, True))
        self.add_bias_relu, self.add_bias_observing, self.add_bias_relu_observing = _qat_bias_ops(library)
        self.eval_params = ops.Custom(f"{library}:QuantLayerEvalParams", out_shape=_eval_params_shapes,
                                      out_dtype=_eval_params_types, func_type="aot")
        self.eval_params_batchnorm = ops.Custom(f"{library}:QuantLayerEvalParamsBatchNorm",
                                                out_shape=_eval_params_shapes, out_dtype=_eval_params_types,
                                                func_type="aot")
        self.min_max = ops.Custom(f"{library}:MinMax", out_shape=lambda x: [2], out_dtype=lambda x: x,
                                  func_type="aot", bprop=min_max_bprop)


def _qat_batchnorm_op(library, relu):
    name = "QatBatchNormRelu" if relu else "QatBatchNorm"
    backward = ops.Custom(f"{library}:{name}Backward", out_shape=lambda *shapes: (shapes[-4], shapes[-3], shapes[-3]),
                          out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def bprop(x, gamma, beta, moving_mean, moving_variance, eps, keep, act_scale, scales, act_min, act_max, ema,
              out, grad):
        reads = (grad[0], out[0], x) if relu else (grad[0], x)
        grad_x, grad_gamma, grad_beta = backward(*reads, gamma, out[1], eps)
        zeros = ops.zeros_like
        return (grad_x, grad_gamma, grad_beta, zeros(moving_mean), zeros(moving_variance), zeros(eps), zeros(keep),
                zeros(act_scale), zeros(scales), zeros(act_min), zeros(act_max), zeros(ema))

    return ops.Custom(f"{library}:{name}Forward", out_shape=lambda x, gamma, *rest: (x, [4, gamma[0]]),
                      out_dtype=lambda x, *rest: (x, x), func_type="aot", bprop=bprop)


def qat_depthwise_batchnorm_ops(library, conv_shape):
    """``{"qat_batchnorm": op, "qat_batchnorm_relu": op}``: a depthwise QAT convolution with
    BatchNorm on batch statistics in training, the weight's fold, the convolution and
    :meth:`FakeQuantKernels.batchnorm` in one operator forward and one backward
    (src/kernels/qat_depthwise.cc), then a ReLU or not; ``conv_shape(x, weight)``: the
    convolution's output shape (its stride).

    ``(x, weight, gamma, beta, moving_mean, moving_variance, eps, keep, in_min, in_max,
    act_min, act_max, ema) -> (output, what the backward reads)``, with gradient to x, weight,
    gamma and beta: x arrives fake-quantized in the range [in_min, in_max], which gives its
    scale; the rest as ``batchnorm``'s, which updates the moving statistics and the output range
    in place.
    """
    return {variant: _qat_depthwise_batchnorm_op(library, conv_shape, relu)
            for variant, relu in (("qat_batchnorm", False), ("qat_batchnorm_relu", True))}


def _qat_depthwise_batchnorm_op(library, conv_shape, relu):
    name = "QatDepthwiseBatchNormRelu" if relu else "QatDepthwiseBatchNorm"
    # (grad_y, [y,] conv, x, quantized weight, weight, gamma, saved rows, eps) -> grads of x, weight, gamma, beta
    backward = ops.Custom(f"{library}:{name}Backward",
                          out_shape=lambda *shapes: (shapes[-6], shapes[-4], shapes[-3], shapes[-3]),
                          out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot")

    def bprop(x, weight, gamma, beta, moving_mean, moving_variance, eps, keep, in_min, in_max, act_min, act_max, ema,
              out, grad):
        reads = (grad[0], out[0]) if relu else (grad[0],)
        grads = backward(*reads, out[1], x, out[2], weight, gamma, out[3], eps)
        zeros = ops.zeros_like
        return (*grads, zeros(moving_mean), zeros(moving_variance), zeros(eps), zeros(keep), zeros(in_min),
                zeros(in_max), zeros(act_min), zeros(act_max), zeros(ema))

    def out_shape(x, weight, gamma, *rest):
        conv = conv_shape(x, weight)
        return conv, conv, weight, [4, gamma[0]]

    return ops.Custom(f"{library}:{name}Forward", out_shape=out_shape, out_dtype=lambda x, *rest: (x,) * 4,
                      func_type="aot", bprop=bprop)


def _ghost_concat_op(library):
    backward = ops.Custom(f"{library}:GhostConcatQuantBackward", out_shape=lambda grad, cheap, used_range: (
        [grad[0], grad[1] - cheap[1], *grad[2:]], cheap), out_dtype=lambda grad, *rest: (grad, grad), func_type="aot")

    def bprop(quantized, cheap, primary, low, high, ema, out, grad):
        zeros = ops.zeros_like
        return backward(grad[0], cheap, out[1]) + (zeros(primary), zeros(low), zeros(high), zeros(ema))

    def out_shape(quantized, cheap, *rest):
        return [quantized[0], quantized[1] + cheap[1], *quantized[2:]], [2]

    return ops.Custom(f"{library}:GhostConcatQuantForward", out_shape=out_shape,
                      out_dtype=lambda quantized, *rest: (quantized, quantized), func_type="aot", bprop=bprop)


def _qat_bias_ops(library):
    """``add_bias_relu(x, bias)`` and the two that step an output range (see FakeQuantKernels)."""
    relu_backward = ops.Custom(f"{library}:QatBiasReluBackward", out_shape=lambda grad, y: (y, [y[1]]),
                               out_dtype=lambda grad, y: (y, y), func_type="aot")

    def bprop_relu(x, bias, out, grad):
        return relu_backward(grad, out)

    def bprop_observing(x, bias, act_min, act_max, ema, out, grad):
        zeros = ops.zeros_like
        return grad, grad.sum(axis=(0, 2, 3)), zeros(act_min), zeros(act_max), zeros(ema)

    def bprop_relu_observing(x, bias, act_min, act_max, ema, out, grad):
        zeros = ops.zeros_like
        return relu_backward(grad, out) + (zeros(act_min), zeros(act_max), zeros(ema))

    return tuple(ops.Custom(f"{library}:{name}", out_shape=lambda x, *rest: x, out_dtype=lambda x, *rest: x,
                            func_type="aot", bprop=bprop)
                 for name, bprop in (("QatBiasReluForward", bprop_relu), ("QatBiasForward", bprop_observing),
                                     ("QatBiasReluForward", bprop_relu_observing)))


def _eval_params_shapes(weight, bias, *rest):
    return weight, bias, [1], [1]


def _eval_params_types(weight, *rest):
    return weight, weight, weight, weight


def fake_quant_kernels():
    """The shared :class:`FakeQuantKernels`, or None where the kernels cannot be built."""
    if "cell" not in _kernels:
        library = build_kernel_library()
        _kernels["cell"] = FakeQuantKernels(library) if library is not None else None
    return _kernels["cell"]
