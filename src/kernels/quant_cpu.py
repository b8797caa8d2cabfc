"""The fake-quant arithmetic as compiled CPU operators (``src/kernels/fake_quant.cc``).

:class:`FakeQuantKernels` holds them; the int8 layers and observers of :mod:`src.quant` take
one as ``fast_quant`` (set by :func:`src.kernels.enable_fast_cpu_path`) and call it where
they would otherwise compose framework operators. The results are the same bit for bit.
"""
import mindspore.nn as nn
import mindspore.ops as ops

from src.kernels.library import build_kernel_library

_kernels = {}


class FakeQuantKernels(nn.Cell):
    """``activation(x, scale, zero_point)``: x quantize-dequantized to uint8, gradient passed
    straight through inside the representable range; ``weight(w)``: ``(fake-quantized w,
    per-output-channel scales)``, gradient passed straight through; ``min_max(x)``: ``[min,
    max]`` of x, shape (2,), no gradient.

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
        self.eval_params = ops.Custom(f"{library}:QuantLayerEvalParams", out_shape=_eval_params_shapes,
                                      out_dtype=_eval_params_types, func_type="aot")
        self.eval_params_batchnorm = ops.Custom(f"{library}:QuantLayerEvalParamsBatchNorm",
                                                out_shape=_eval_params_shapes, out_dtype=_eval_params_types,
                                                func_type="aot")
        self.min_max = ops.Custom(f"{library}:MinMax", out_shape=lambda x: [2], out_dtype=lambda x: x,
                                  func_type="aot", bprop=min_max_bprop)


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
