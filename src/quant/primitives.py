"""The int8 arithmetic, in one place: ranges, rounding, scales and zero points.

Weights: per output channel, symmetric, zero point 0, integers in [WEIGHT_QMIN, WEIGHT_QMAX].
Activations: per tensor, asymmetric, integers in [ACT_QMIN, ACT_QMAX]. Rounding passes
gradients straight through, clipped to the representable range.

``kernels``: the compiled CPU operators (:class:`src.kernels.quant_cpu.FakeQuantKernels`)
that compute the same in one pass, where a layer has them; else framework operators.
"""
import mindspore.ops as ops

WEIGHT_QMIN, WEIGHT_QMAX = -128, 127
ACT_QMIN, ACT_QMAX = 0, 255
_TINY = 1e-12


def round_half_up(x):
    """Rounding used everywhere here; MindSpore's Round exports to ONNX with an input ONNX lacks."""
    return ops.floor(x + 0.5)


def activation_qparams(act_min, act_max):
    """Scale and zero point (0-d tensors) of a uint8 range covering [act_min, act_max] and 0."""
    # 0-d: MindSpore's CPU kernels broadcast a shape-(1,) operand ~50x slower
    low = ops.minimum(act_min.squeeze(), 0.0)
    high = ops.maximum(act_max.squeeze(), 0.0)
    scale = ops.maximum((high - low) / (ACT_QMAX - ACT_QMIN), _TINY)
    zero_point = ops.clamp(round_half_up(ACT_QMIN - low / scale), ACT_QMIN, ACT_QMAX)
    return scale, zero_point


def fake_quant_activation(x, scale, zero_point, kernels=None):
    """Quantize-dequantize to uint8; gradient 1 inside the representable range, 0 outside."""
    if kernels is not None:
        return kernels.activation(x, scale, zero_point)
    clipped = ops.clamp(x, (ACT_QMIN - zero_point) * scale, (ACT_QMAX - zero_point) * scale)
    quantized = round_half_up(clipped / scale) * scale  # (q - zero_point) * scale, q = round + zp
    return clipped + ops.stop_gradient(quantized - clipped)


def weight_scales(weight):
    """Per-output-channel symmetric scales: max |w| maps to WEIGHT_QMAX."""
    flat = ops.stop_gradient(weight).reshape(weight.shape[0], -1)
    return ops.maximum(flat.abs().max(axis=1) / WEIGHT_QMAX, _TINY)


def per_channel_shape(ndim):
    """The shape that broadcasts per-output-channel values over an ``ndim`` weight."""
    return (-1,) + (1,) * (ndim - 1)


def per_channel(scales, ndim):
    """``scales`` shaped to broadcast over the output-channel axis of an ``ndim`` weight."""
    return scales.reshape(per_channel_shape(ndim))


def weight_integers(weight, scales):
    """The int8 values of ``weight`` (as floats) for per-output-channel ``scales``."""
    return ops.clamp(round_half_up(weight / per_channel(scales, weight.ndim)), WEIGHT_QMIN, WEIGHT_QMAX)


def bias_integers(bias, scales):
    """The int32 values of ``bias`` at the accumulator's scale (activation x weight scale)."""
    return round_half_up(bias / scales)


def fake_quant_weight(weight, scales):
    quantized = weight_integers(weight, scales) * per_channel(scales, weight.ndim)
    return weight + ops.stop_gradient(quantized - weight)


def fake_quant_weight_per_channel(weight, kernels=None):
    """``(fake-quantized weight, its per-output-channel scales)``."""
    if kernels is not None:
        return kernels.weight(weight)
    scales = weight_scales(weight)
    return fake_quant_weight(weight, scales), scales


def fake_quant_bias(bias, scales):
    return bias + ops.stop_gradient(bias_integers(bias, scales) * scales - bias)
