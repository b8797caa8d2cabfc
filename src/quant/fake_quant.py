"""Fake-quant layers: float weights quantize-dequantized to int8, inputs to uint8, in training
and eval alike; what calibration and QAT fine-tuning run. Each holds the observer of its input
range (``input_quant``, the name in fake-quant checkpoints)."""
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

from src.kernels import apply_conv, conv_geometry
from src.quant.observers import RangeObserver
from src.quant.primitives import (activation_qparams, fake_quant_activation, fake_quant_bias,
                                  fake_quant_weight, weight_scales)


class _FakeQuantLayer(nn.Cell):
    """Quantizes its input to uint8 with the range its observer holds."""

    def __init__(self):
        super().__init__()
        self.input_quant = RangeObserver()

    def quantize_input(self, x):
        """``(fake-quantized x, its scale)``, after the observer has seen ``x``."""
        x = self.input_quant(x)
        scale, zero_point = activation_qparams(self.input_quant.act_min, self.input_quant.act_max)
        return fake_quant_activation(x, scale, zero_point), scale


class QuantConv2d(_FakeQuantLayer):
    """A convolution (optionally with the BatchNorm after it folded in) in fake-quant int8.

    Training before BN is frozen uses batch statistics with the correction of Krishnamoorthi
    (2018, section 3.2); frozen and in eval, weights and bias are folded with the moving
    statistics: exactly what :class:`~src.quant.int8.Int8Conv2d` computes with integers. The
    output's range is observed, not quantized: a deployment that requantizes between layers
    (a QDQ ONNX model, src/deploy/onnx_export.py) takes its scales from there.
    """
    accepts_fast_conv = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self, conv, bn=None):
        super().__init__()
        self.geometry = conv_geometry(conv)
        self.fast_conv = getattr(conv, "fast_conv", None)
        self.weight = conv.weight
        self.bias = conv.bias if conv.has_bias else None
        self.bn = bn
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
        x, act_scale = self.quantize_input(x)
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


class QuantDense(_FakeQuantLayer):
    """The classifier in fake-quant int8."""

    def __init__(self, dense):
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias

    def folded(self):
        return self.weight, self.bias, None

    def construct(self, x):
        x, act_scale = self.quantize_input(x)
        scales = weight_scales(self.weight)
        out = ops.matmul(x, fake_quant_weight(self.weight, scales).T)
        return out + fake_quant_bias(self.bias, act_scale * scales)
