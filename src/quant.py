"""int8 quantization of GhostNet with standard ops only (so it runs on CPU, GPU and Ascend).

Two forms of the same network:

* the fake-quant (QAT) form, :func:`quantize_network`: float weights and BatchNorm, folded
  before the weights are quantized, with activation observers. It calibrates and fine-tunes.
* the int8 form, :func:`build_int8_network`: int8 weights with per-channel scales, int32
  biases, uint8 activation scales and zero points; what an int8 checkpoint holds and what
  a deployment runs. :func:`export_int8_params` turns the first into the second.

Weights: per output channel, symmetric, zero point 0, integers in [WEIGHT_QMIN, WEIGHT_QMAX].
Activations (the input of every convolution and of the classifier): per tensor, asymmetric,
integers in [ACT_QMIN, ACT_QMAX]. Rounding passes gradients straight through, clipped to the
representable range.
"""
import logging

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

from src.ghostnet import ConvBNAct, GhostNet, SqueezeExcite

logger = logging.getLogger(__name__)

WEIGHT_QMIN, WEIGHT_QMAX = -128, 127
ACT_QMIN, ACT_QMAX = 0, 255
ACTIVATION_EMA_DECAY = 0.99
INT8_SUFFIXES = ("weight_scale", "act_scale", "act_zero_point")
QAT_SUFFIXES = ("input_quant.act_min", "input_quant.act_max")
_TINY = 1e-12


# --- quantization arithmetic (one place for the ranges and the rounding) -----------------

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


def fake_quant_activation(x, scale, zero_point):
    """Quantize-dequantize to uint8; gradient 1 inside the representable range, 0 outside."""
    clipped = ops.clamp(x, (ACT_QMIN - zero_point) * scale, (ACT_QMAX - zero_point) * scale)
    quantized = round_half_up(clipped / scale) * scale  # (q - zero_point) * scale, q = round + zp
    return clipped + ops.stop_gradient(quantized - clipped)


def weight_scales(weight):
    """Per-output-channel symmetric scales: max |w| maps to WEIGHT_QMAX."""
    flat = ops.stop_gradient(weight).reshape(weight.shape[0], -1)
    return ops.maximum(flat.abs().max(axis=1) / WEIGHT_QMAX, _TINY)


def _per_channel(scales, ndim):
    return scales.reshape((-1,) + (1,) * (ndim - 1))


def weight_integers(weight, scales):
    """The int8 values of ``weight`` (as floats) for per-output-channel ``scales``."""
    return ops.clamp(round_half_up(weight / _per_channel(scales, weight.ndim)), WEIGHT_QMIN, WEIGHT_QMAX)


def bias_integers(bias, scales):
    """The int32 values of ``bias`` at the accumulator's scale (activation x weight scale)."""
    return round_half_up(bias / scales)


def fake_quant_weight(weight, scales):
    quantized = weight_integers(weight, scales) * _per_channel(scales, weight.ndim)
    return weight + ops.stop_gradient(quantized - weight)


def fake_quant_bias(bias, scales):
    return bias + ops.stop_gradient(bias_integers(bias, scales) * scales - bias)


# --- the fake-quant form ------------------------------------------------------------------

def conv_geometry(conv):
    """(stride, padding, groups) of an ``nn.Conv2d``, as ``ops.conv2d`` takes them."""
    stride = conv.stride[2:] if len(conv.stride) == 4 else conv.stride
    return stride, conv.padding, conv.group


def apply_conv(x, weight, geometry, fast_conv=None):
    """The convolution; ``fast_conv`` is the fast CPU cell for it, if any (src/fast_cpu.py)."""
    if fast_conv is not None:
        return fast_conv(x, weight)
    stride, padding, groups = geometry
    return ops.conv2d(x, weight, None, stride, "pad", padding, 1, groups)


class RangeObserver(nn.Cell):
    """Tracks the min/max of a tensor; returns it unchanged.

    In training the range follows an EMA; in eval it is fixed, unless ``calibrating`` is
    set (by :func:`calibrate`), when it widens to every value seen. The switch is a
    parameter so that one compiled eval graph serves both.
    """

    def __init__(self):
        super().__init__()
        self.act_min = Parameter(Tensor(np.zeros(1, np.float32)), name="act_min", requires_grad=False)
        self.act_max = Parameter(Tensor(np.zeros(1, np.float32)), name="act_max", requires_grad=False)
        self.calibrating = Parameter(Tensor(np.zeros(1, np.float32)), name="calibrating", requires_grad=False)

    def observe(self, x):
        seen_min = ops.stop_gradient(x.min()).reshape(1)
        seen_max = ops.stop_gradient(x.max()).reshape(1)
        if self.training:
            ops.assign(self.act_min, self.act_min * ACTIVATION_EMA_DECAY + seen_min * (1 - ACTIVATION_EMA_DECAY))
            ops.assign(self.act_max, self.act_max * ACTIVATION_EMA_DECAY + seen_max * (1 - ACTIVATION_EMA_DECAY))
        else:
            keep = 1 - self.calibrating
            ops.assign(self.act_min, keep * self.act_min + self.calibrating * ops.minimum(self.act_min, seen_min))
            ops.assign(self.act_max, keep * self.act_max + self.calibrating * ops.maximum(self.act_max, seen_max))

    def construct(self, x):
        self.observe(x)
        return x


class ActivationQuantizer(RangeObserver):
    """Observes its input like :class:`RangeObserver` and fake-quantizes it to uint8."""

    def construct(self, x):
        self.observe(x)
        scale, zero_point = activation_qparams(self.act_min, self.act_max)
        return fake_quant_activation(x, scale, zero_point), scale


class QuantConv2d(nn.Cell):
    """A convolution (optionally with the BatchNorm after it folded in) in fake-quant int8.

    Training before BN is frozen uses batch statistics with the correction of Krishnamoorthi
    (2018, section 3.2); frozen and in eval, weights and bias are folded with the moving
    statistics: exactly what :class:`Int8Conv2d` computes with integers. The output's range
    is observed, not quantized: a deployment that requantizes between layers (a QDQ ONNX
    model, src/onnx_export.py) takes its scales from there.
    """

    def __init__(self, conv, bn=None):
        super().__init__()
        self.geometry = conv_geometry(conv)
        self.fast_conv = getattr(conv, "fast_conv", None)
        self.weight = conv.weight
        self.bias = conv.bias if conv.has_bias else None
        self.bn = bn
        self.input_quant = ActivationQuantizer()
        self.output_range = RangeObserver()
        self.bn_frozen = None if bn is None else Parameter(
            Tensor(np.zeros(1, np.float32)), name="bn_frozen", requires_grad=False)

    def folded(self, batch_mean=None, batch_std=None):
        """(folded weight, folded bias, output correction) for the current statistics."""
        if self.bn is None:
            return self.weight, self.bias, None
        bn = self.bn
        moving_std = ops.sqrt(bn.moving_variance + bn.eps)
        weight = self.weight * (bn.gamma / moving_std).reshape(-1, 1, 1, 1)
        if batch_mean is None:
            return weight, bn.beta - bn.gamma * bn.moving_mean / moving_std, None
        frozen = self.bn_frozen
        mean = frozen * bn.moving_mean + (1 - frozen) * batch_mean
        std = frozen * moving_std + (1 - frozen) * batch_std
        correction = frozen + (1 - frozen) * moving_std / batch_std
        return weight, bn.beta - bn.gamma * mean / std, correction

    def _batch_statistics(self, x):
        out = apply_conv(x, self.weight, self.geometry, self.fast_conv)
        mean = out.mean(axis=(0, 2, 3))
        var = ((out - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
        bn, frozen = self.bn, self.bn_frozen
        momentum = bn.momentum
        n = out.shape[0] * out.shape[2] * out.shape[3]
        unbiased = ops.stop_gradient(var) * n / max(n - 1, 1)
        new_mean = bn.moving_mean * momentum + ops.stop_gradient(mean) * (1 - momentum)
        new_var = bn.moving_variance * momentum + unbiased * (1 - momentum)
        ops.assign(bn.moving_mean, frozen * bn.moving_mean + (1 - frozen) * new_mean)
        ops.assign(bn.moving_variance, frozen * bn.moving_variance + (1 - frozen) * new_var)
        return mean, ops.sqrt(var + bn.eps)

    def construct(self, x):
        x, act_scale = self.input_quant(x)
        if self.bn is not None and self.training:
            batch_mean, batch_std = self._batch_statistics(x)
            weight, bias, correction = self.folded(batch_mean, batch_std)
        else:
            weight, bias, correction = self.folded()
        scales = weight_scales(weight)
        out = apply_conv(x, fake_quant_weight(weight, scales), self.geometry, self.fast_conv)
        if correction is not None:
            out = out * correction.reshape(1, -1, 1, 1)
        if bias is not None:
            out = out + fake_quant_bias(bias, act_scale * scales).reshape(1, -1, 1, 1)
        return self.output_range(out)


class QuantDense(nn.Cell):
    """The classifier in fake-quant int8."""

    def __init__(self, dense):
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias
        self.input_quant = ActivationQuantizer()

    def folded(self):
        return self.weight, self.bias, None

    def construct(self, x):
        x, act_scale = self.input_quant(x)
        scales = weight_scales(self.weight)
        out = ops.matmul(x, fake_quant_weight(self.weight, scales).T)
        return out + fake_quant_bias(self.bias, act_scale * scales)


# --- the int8 form ------------------------------------------------------------------------

class _Int8Params(nn.Cell):
    def __init__(self, weight_shape):
        super().__init__()
        out_channels = weight_shape[0]
        self.weight = Parameter(Tensor(np.zeros(weight_shape, np.int8)), name="weight", requires_grad=False)
        self.weight_scale = Parameter(Tensor(np.ones(out_channels, np.float32)), name="weight_scale",
                                      requires_grad=False)
        self.bias = Parameter(Tensor(np.zeros(out_channels, np.int32)), name="bias", requires_grad=False)
        self.act_scale = Parameter(Tensor(np.ones(1, np.float32)), name="act_scale", requires_grad=False)
        self.act_zero_point = Parameter(Tensor(np.zeros(1, np.int32)), name="act_zero_point",
                                        requires_grad=False)

    def dequantized(self, x):
        """(dequantized input, dequantized weight, dequantized bias)."""
        scale = self.act_scale.squeeze()  # 0-d: see activation_qparams
        x = fake_quant_activation(x, scale, self.act_zero_point.squeeze().astype(ms.float32))
        weight = self.weight.astype(ms.float32) * _per_channel(self.weight_scale, len(self.weight.shape))
        bias = self.bias.astype(ms.float32) * (scale * self.weight_scale)
        return x, weight, bias


class Int8Conv2d(_Int8Params):
    """Convolution with int8 weights, int32 bias and a uint8 input, as a deployment runs it.

    ``output_min`` / ``output_max`` hold the observed output range, for exporters.
    """

    def __init__(self, conv):
        super().__init__(conv.weight.shape)
        self.geometry = conv_geometry(conv)
        self.fast_conv = getattr(conv, "fast_conv", None)
        self.output_min = Parameter(Tensor(np.zeros(1, np.float32)), name="output_min", requires_grad=False)
        self.output_max = Parameter(Tensor(np.zeros(1, np.float32)), name="output_max", requires_grad=False)

    def construct(self, x):
        x, weight, bias = self.dequantized(x)
        return apply_conv(x, weight, self.geometry, self.fast_conv) + bias.reshape(1, -1, 1, 1)


class Int8Dense(_Int8Params):
    def __init__(self, dense):
        super().__init__(dense.weight.shape)

    def construct(self, x):
        x, weight, bias = self.dequantized(x)
        return ops.matmul(x, weight.T) + bias


# --- conversion ---------------------------------------------------------------------------

def _rename_parameters(net):
    """Give every parameter its path as name (optimizer moments and checkpoints use it)."""
    for name, param in net.parameters_and_names():
        param.name = name
    return net


def _replace_layers(net, make_conv, make_dense):
    """Swap every convolution (with its BatchNorm, where one follows) and the classifier."""
    if not isinstance(net, GhostNet):
        raise TypeError(f"expected a GhostNet, got {type(net).__name__}")
    net.conv_stem = make_conv(net.conv_stem, net.bn1)
    net.bn1 = None
    for _, cell in list(net.cells_and_names()):
        if isinstance(cell, ConvBNAct):
            cell.conv = make_conv(cell.conv, cell.bn)
            cell.bn = None
        elif isinstance(cell, SqueezeExcite):
            cell.conv_reduce = make_conv(cell.conv_reduce, None)
            cell.conv_expand = make_conv(cell.conv_expand, None)
    net.conv_head = make_conv(net.conv_head, None)
    net.classifier = make_dense(net.classifier)
    return _rename_parameters(net)


def quantize_network(net):
    """Turn a float GhostNet (weights loaded) into its fake-quant form, in place."""
    return _replace_layers(net, QuantConv2d, QuantDense)


def build_int8_network(width=1.0, num_classes=37):
    """The network an int8 checkpoint loads into."""
    return _replace_layers(GhostNet(width=width, num_classes=num_classes),
                           lambda conv, bn: Int8Conv2d(conv), Int8Dense)


def quantized_layers(net):
    return [(name, cell) for name, cell in net.cells_and_names()
            if isinstance(cell, (QuantConv2d, QuantDense))]


def export_int8_params(net):
    """``{name: ndarray}`` of the int8 form, computed from a fake-quant network in eval mode."""
    params = {}
    for name, layer in quantized_layers(net):
        weight, bias, _ = layer.folded()
        act_scale, zero_point = activation_qparams(layer.input_quant.act_min, layer.input_quant.act_max)
        scales = weight_scales(weight)
        q_weight = weight_integers(weight, scales)
        bias = bias if bias is not None else ops.zeros(weight.shape[0], ms.float32)
        q_bias = bias_integers(bias, act_scale * scales)
        params[f"{name}.weight"] = q_weight.asnumpy().astype(np.int8)
        params[f"{name}.weight_scale"] = scales.asnumpy().astype(np.float32)
        params[f"{name}.bias"] = q_bias.asnumpy().astype(np.int32)
        params[f"{name}.act_scale"] = act_scale.asnumpy().astype(np.float32).reshape(1)
        params[f"{name}.act_zero_point"] = zero_point.asnumpy().astype(np.int32).reshape(1)
        if isinstance(layer, QuantConv2d):
            params[f"{name}.output_min"] = layer.output_range.act_min.asnumpy().astype(np.float32)
            params[f"{name}.output_max"] = layer.output_range.act_max.asnumpy().astype(np.float32)
    return params


def checkpoint_kind(params):
    """``"int8"``, ``"qat"`` (fake-quant fine-tuning state) or ``"float"`` from the names."""
    names = list(params)
    if any(n.endswith(INT8_SUFFIXES) for n in names):
        return "int8"
    if any(n.endswith(QAT_SUFFIXES) for n in names):
        return "qat"
    return "float"


def set_bn_frozen(net, frozen):
    for _, layer in quantized_layers(net):
        if isinstance(layer, QuantConv2d) and layer.bn_frozen is not None:
            layer.bn_frozen.set_data(Tensor(np.full(1, float(frozen), np.float32)))


def calibrate(net, dataset, num_batches):
    """Set every activation range from ``num_batches`` batches (eval mode, BN statistics fixed)."""
    quantizers = [cell for _, cell in net.cells_and_names() if isinstance(cell, RangeObserver)]

    def set_all(calibrating):
        for q in quantizers:
            q.calibrating.set_data(Tensor(np.full(1, float(calibrating), np.float32)))

    for q in quantizers:
        q.act_min.set_data(Tensor(np.zeros(1, np.float32)))
        q.act_max.set_data(Tensor(np.zeros(1, np.float32)))
    net.set_train(False)
    seen = 0
    set_all(True)
    try:
        for seen, (images, _) in enumerate(dataset.create_tuple_iterator(num_epochs=1), 1):
            net(images)
            logger.info("calibration batch %d/%d", seen, num_batches)
            if seen >= num_batches:
                break
    finally:
        set_all(False)
    if seen < num_batches:
        logger.warning("calibrated on %d batches: the dataset has no more", seen)
    return seen
