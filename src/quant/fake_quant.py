"""Fake-quant layers: float weights quantize-dequantized to int8, inputs to uint8, in training
and eval alike; what calibration and QAT fine-tuning run. Each holds the observer of its input
range (``input_quant``, the name in fake-quant checkpoints)."""
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Tensor

from src.ghostnet import ConvBNAct, moving_share_kept
from src.graph_ops import item
from src.kernels import apply_conv, conv_geometry, framework_conv
from src.kernels.fast_cpu import is_fast_depthwise
from src.quant.observers import RangeObserver
from src.quant.primitives import (activation_qparams, fake_quant_activation, fake_quant_bias,
                                  fake_quant_weight_per_channel)


class QuantConvBNAct(ConvBNAct):
    """``ConvBNAct`` of the quantized forms, whose convolution computes the BatchNorm and applies
    the ReLU too, if any (``output(x, relu)``: on the fast path, in its kernels). Its construct
    is one call, without the branches of ``ConvBNAct``'s: each branch of a cell's construct is a
    subgraph for each instance, which the graph compile specializes one by one.
    ``relu_inside``: whether the ReLU is applied."""

    def construct(self, x):
        return self.conv.output(x, self.relu_inside)


class QuantizedInputConv:
    """The eval convolution of a layer whose input is quantized to uint8: what
    :class:`QuantConv2d` computes in eval and :class:`~src.quant.int8.Int8Conv2d` always. A
    mixin for cells with ``conv_op``, ``fast_conv``, ``fast_quant``, ``bias`` (and ``bn``, if
    any) and ``_input_on_grid``: whether the input arrives quantized so (by a ghost module's
    concatenation), where quantizing it again would change nothing.

    The steps are picked by properties, from the layer's attributes, which the graph compile
    reads as constants and so folds each property to one method: each layer's graph holds its
    one path, without the branches to the others (a branch is a subgraph for each instance,
    which the compile specializes one by one)."""

    @property
    def _convolution(self):
        """The convolution without bias: the fast cell where there is one, else the framework's
        operator."""
        return self.conv_op if self.fast_conv is None else self.fast_conv

    @property
    def _quantized_input_convolution(self):
        """``(x, scale, zero_point, weight, bias, relu) -> output``: x fake-quantized to uint8
        (``scale``, ``zero_point``; not again where it arrives so), the convolution with
        ``bias``, then a ReLU with ``relu`` (a constant). Where the compiled depthwise kernel
        runs, it quantizes x as it reads it and applies the ReLU."""
        has_bias = self.bias is not None or getattr(self, "bn", None) is not None
        if has_bias and self.fast_quant is not None and is_fast_depthwise(self.fast_conv):
            return self._depthwise_on_grid if self._input_on_grid else self._depthwise_quantizing
        return self._convolve_on_grid if self._input_on_grid else self._quantize_and_convolve

    def _depthwise_on_grid(self, x, scale, zero_point, weight, bias, relu):
        return self._depthwise_biased(x, weight, bias, relu)

    def _depthwise_biased(self, x, weight, bias, relu):
        if relu:
            return self.fast_conv.bias_relu(x, weight, bias)
        return self.fast_conv.bias_only(x, weight, bias)

    def _depthwise_quantizing(self, x, scale, zero_point, weight, bias, relu):
        if relu:
            return self.fast_conv.quantized_input_relu(x, weight, bias, scale, zero_point)
        return self.fast_conv.quantized_input(x, weight, bias, scale, zero_point)

    def _quantize_and_convolve(self, x, scale, zero_point, weight, bias, relu):
        x = fake_quant_activation(x, scale, zero_point, self.fast_quant)
        return self._convolve_on_grid(x, scale, zero_point, weight, bias, relu)

    def _convolve_on_grid(self, x, scale, zero_point, weight, bias, relu):
        out = self._biased_convolution(x, weight, bias)
        return ops.relu(out) if relu else out

    @property
    def _biased_convolution(self):
        """``(x, weight, bias) -> the convolution plus bias``: :func:`~src.kernels.apply_conv`'s
        choice, picked in the property."""
        has_bias = self.bias is not None or getattr(self, "bn", None) is not None
        if not has_bias or is_fast_depthwise(self.fast_conv):
            return self._apply_conv
        return self._convolution_plus_bias

    def _apply_conv(self, x, weight, bias):
        return apply_conv(x, weight, self.conv_op, self.fast_conv, bias)

    def _convolution_plus_bias(self, x, weight, bias):
        return ops.bias_add(self._convolution(x, weight), bias)


def channel_moments(x):
    """Per-channel mean and biased variance of an NCHW tensor, with gradient."""
    mean = x.mean(axis=(0, 2, 3))
    return mean, ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))


def quantize_in_range(x, observer, fast_quant=None):
    """``(x fake-quantized to uint8 with the range ``observer`` holds, the scale)``."""
    if fast_quant is not None:
        quantized = fast_quant.activation_in_range(x, observer.act_min, observer.act_max)
        return item(quantized, 0), item(quantized, 1)
    scale, zero_point = activation_qparams(observer.act_min, observer.act_max)
    return fake_quant_activation(x, scale, zero_point), scale


def observe_and_quantize(x, observer, fast_quant=None):
    """In training: ``observer``'s step on ``x``, then :func:`quantize_in_range`. On the kernels
    one operator, which takes the step in place."""
    if fast_quant is not None:
        quantized = fast_quant.activation_observed(x, observer.act_min, observer.act_max, observer.kernel_ema())
        return item(quantized, 0), item(quantized, 1)
    return quantize_in_range(observer(x), observer)


class ConcatQuant(nn.Cell):
    """The one quantization of a concatenation's parts (a ghost module's two halves), so that
    concatenating the quantized parts is a copy, as TFLite's int8 spec requires. ``observer``
    is the input quantization of the layer that reads the first part (the cheap operation).

    Calling it quantizes a part with the range as it stands (calibrating, after widening the
    range to the part); :meth:`concat` quantizes the second part and concatenates. In training
    the range moves once per step, after both parts are quantized: each part of a step sits on
    one grid.
    """
    accepts_fast_quant = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self, observer):
        super().__init__()
        self.observer = observer
        self.fast_quant = None

    def construct(self, x):
        if not self.training:
            x = self.observer(x)  # widens the range while calibrating, else nothing
        return item(quantize_in_range(x, self.observer, self.fast_quant), 0)

    def concat(self, primary, quantized, cheap):
        """A ghost module's output: ``quantized`` (``primary`` through this quantization) and
        ``cheap`` quantized, concatenated. In training, then the range's step over both float
        parts together (a step per part would settle between their ranges, not cover both); on
        the kernels all in one operator, the step in place."""
        observer = self.observer
        if self.training and self.fast_quant is not None:
            return item(self.fast_quant.ghost_concat(quantized, cheap, primary, observer.act_min, observer.act_max,
                                                     observer.kernel_ema()), 0)
        out = ops.cat((quantized, self.construct(cheap)), axis=1)
        observer.watch_together(primary, cheap)
        return out


class _FakeQuantLayer(nn.Cell):
    """Quantizes its input to uint8 with the range its observer holds.

    ``observes_input`` is False where the input arrives quantized by a ghost module's
    concatenation with this layer's own observer (see
    :func:`src.quant.convert.share_concat_quantization`): observing again would count the
    values twice, and quantizing again changes nothing (in eval; see :meth:`quantize_input`).
    """
    accepts_fast_quant = True  # see src.kernels.enable_fast_cpu_path

    def __init__(self):
        super().__init__()
        self.input_quant = RangeObserver()
        self.observes_input = True
        self.fast_quant = None

    def read_quantized_by(self, layer):
        """Take inputs quantized upstream with the input quantization of ``layer`` (this layer
        itself, or another), which becomes this layer's."""
        self.input_quant = layer.input_quant
        self.observes_input = False

    @property
    def _input_observer(self):
        """The input's observer, or nothing where the input arrives quantized (``observes_input``)."""
        return self.input_quant if self.observes_input else self._unchanged

    def _unchanged(self, x):
        return x

    @property
    def quantize_input(self):
        """``quantize_input(x)``: in training, ``(fake-quantized x, its scale)``, after the
        observer has seen ``x``. An input that arrives quantized (``observes_input`` False) is
        passed on as it is: the step's one update may have moved the range since, and
        requantizing to a grid a hair away flips values wherever rounding differences decide
        (measured: the kernel and framework paths parted). The path is picked as
        :class:`QuantizedInputConv`'s steps are."""
        if self.observes_input:
            return self._observe_and_quantize_input
        return self._on_grid_input if self.fast_quant is None else self._on_grid_input_on_kernels

    def _observe_and_quantize_input(self, x):
        return observe_and_quantize(x, self.input_quant, self.fast_quant)

    def _on_grid_input(self, x):
        observer = self.input_quant
        return x, activation_qparams(observer.act_min, observer.act_max)[0]

    def _on_grid_input_on_kernels(self, x):
        observer = self.input_quant
        # read after x is computed: a ghost module's concatenation takes the range's step in place
        return x, self.fast_quant.activation_scale(x, observer.act_min, observer.act_max)

    def quantize_bias(self, bias, act_scale, scales):
        """``bias`` fake-quantized at the accumulator's scale, ``act_scale * scales``."""
        if self.fast_quant is not None:
            return self.fast_quant.bias(bias, act_scale, scales)
        return fake_quant_bias(bias, act_scale * scales)

    def quantize_weight(self, weight):
        """``(fake-quantized weight, its per-output-channel scales)``."""
        return fake_quant_weight_per_channel(weight, self.fast_quant)

    def quantized_folded(self, act_scale):
        """``(weight, bias)`` of :meth:`folded`, fake-quantized, the bias at ``act_scale`` times
        the weight scales (it may be None); with gradient."""
        weight, bias = self.folded()
        weight, scales = self.quantize_weight(weight)
        return weight, None if bias is None else self.quantize_bias(bias, act_scale, scales)

    @property
    def eval_params(self):
        """``eval_params()``: ``(weight, bias, input scale, input zero point)`` as the int8 layer
        holds them, dequantized: BatchNorm folded with its moving statistics; the bias may be
        None. Picked as :class:`QuantizedInputConv`'s steps are."""
        if self.fast_quant is not None and self.bn is not None:
            return self._eval_params_batchnorm_on_kernels
        if self.fast_quant is not None and self.bias is not None:
            return self._eval_params_on_kernels
        return self._eval_params

    def _eval_params_batchnorm_on_kernels(self):
        observer, bn = self.input_quant, self.bn
        return self.fast_quant.eval_params_batchnorm(self.weight, bn.beta, observer.act_min, observer.act_max,
                                                     bn.gamma, bn.moving_mean, bn.moving_variance, self.bn_eps)

    def _eval_params_on_kernels(self):
        observer = self.input_quant
        return self.fast_quant.eval_params(self.weight, self.bias, observer.act_min, observer.act_max)

    def _eval_params(self):
        observer = self.input_quant
        act_scale, zero_point = activation_qparams(observer.act_min, observer.act_max)
        weight, bias = self.quantized_folded(act_scale)
        return weight, bias, act_scale, zero_point


class QuantConv2d(QuantizedInputConv, _FakeQuantLayer):
    """A convolution (optionally with the BatchNorm after it folded in) in fake-quant int8.

    Training uses BatchNorm's batch statistics (see :meth:`_train_with_batch_statistics`)
    until BN is frozen; frozen and in eval, weights and bias are folded with the moving
    statistics: exactly what :class:`~src.quant.int8.Int8Conv2d` computes with integers. The
    output's range is observed, not quantized: a deployment that requantizes between layers
    (a QDQ ONNX model, src/deploy/onnx_export.py) takes its scales from there.

    ``bn_frozen`` is read when a graph compiles (see :func:`src.quant.set_bn_frozen`): the
    frozen training graph leaves the batch statistics out, which makes it a fifth to a
    quarter quicker to compile.

    :meth:`with_relu` is the layer followed by a ReLU (its observer still watches the output
    before the ReLU): on the fast CPU path one kernel applies both where it can.
    """
    accepts_fast_conv = True  # see src.kernels.enable_fast_cpu_path
    # a depthwise layer on the kernels with BatchNorm on batch statistics trains in one operator
    # (see _train_depthwise_with_batch_statistics); False: in the layer's separate operators
    fuses_depthwise_batchnorm = True

    def __init__(self, conv, bn=None):
        super().__init__()
        self.geometry = conv_geometry(conv)
        self.conv_op = framework_conv(self.geometry, conv.weight.shape)
        self.fast_conv = getattr(conv, "fast_conv", None)
        self.weight = conv.weight
        self.bias = conv.bias if conv.has_bias else None
        self.bn = bn
        self.bn_eps = None if bn is None else Tensor(np.full(1, bn.eps, np.float32))
        self.bn_keep = None if bn is None else Tensor(np.full(1, moving_share_kept(bn), np.float32))
        self.output_range = RangeObserver()
        self.bn_frozen = False

    def folded(self):
        """(folded weight, folded bias) with the moving statistics; unfolded without BN."""
        if self.bn is None:
            return self.weight, self.bias
        bn = self.bn
        moving_std = ops.sqrt(bn.moving_variance + bn.eps)
        weight = self.weight * (bn.gamma / moving_std).reshape(-1, 1, 1, 1)
        return weight, self._folded_bias(moving_std)

    def _folded_bias(self, moving_std):
        bn = self.bn
        return bn.beta - bn.gamma * bn.moving_mean / moving_std

    @property
    def _train_folded(self):
        """``_train_folded(act_scale)``: ``(weight, bias)`` with BatchNorm (where there is one,
        frozen) folded with its moving statistics, fake-quantized as in eval, with gradient to
        the weight, gamma and beta."""
        if self.fast_quant is not None and self.bn is not None:
            return self._train_folded_on_kernels
        return self.quantized_folded

    def _train_folded_on_kernels(self, act_scale):
        bn = self.bn
        folded = self.fast_quant.fold_batchnorm(self.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
                                                self.bn_eps, act_scale)
        return item(folded, 0), item(folded, 1)

    def _train_with_folded_weights(self, x, relu):
        """The training output with BatchNorm frozen (or none), then a ReLU with ``relu``. On
        the fast path the bias, the ReLU and the output range's step run in one kernel after
        the convolution (where the range is frozen, without it; or in the depthwise kernel)."""
        quantized = self.quantize_input(x)
        folded = self._train_folded(item(quantized, 1))
        return self._folded_convolution(item(quantized, 0), item(folded, 0), item(folded, 1), relu)

    @property
    def _folded_convolution(self):
        """``(x, weight, bias, relu) -> output`` of :meth:`_train_with_folded_weights`, with the
        output range's step unless it is frozen."""
        frozen = self.output_range.frozen
        has_bias = self.bias is not None or self.bn is not None
        if frozen and has_bias and is_fast_depthwise(self.fast_conv):
            return self._depthwise_biased
        if self.fast_quant is None or not has_bias:
            return self._convolve_observing
        return self._convolve_biased_on_kernels if frozen else self._convolve_observing_on_kernels

    def _convolve_biased_on_kernels(self, x, weight, bias, relu):
        if relu:
            return self.fast_quant.add_bias_relu(self._convolution(x, weight), bias)
        return apply_conv(x, weight, self.conv_op, self.fast_conv, bias)

    def _convolve_observing_on_kernels(self, x, weight, bias, relu):
        observer = self.output_range
        add_bias = self.fast_quant.add_bias_relu_observing if relu else self.fast_quant.add_bias_observing
        return add_bias(self._convolution(x, weight), bias, observer.act_min, observer.act_max, observer.ema)

    def _convolve_observing(self, x, weight, bias, relu):
        out = self.output_range(apply_conv(x, weight, self.conv_op, self.fast_conv, bias))
        return ops.relu(out) if relu else out

    def _train_with_batch_statistics(self, x, relu):
        """The output with BatchNorm on batch statistics, one convolution, then a ReLU with
        ``relu``.

        As torch.ao's ConvBn2d: the convolution runs with the weight folded with the moving
        statistics and quantized; its batch statistics, scaled back by moving_std / gamma,
        stand for those of the unfolded convolution, and the output is corrected to them
        (Krishnamoorthi 2018, section 3.2). The moving statistics take the batch's share.
        """
        quantized = self.quantize_input(x)
        x, act_scale = item(quantized, 0), item(quantized, 1)
        bn = self.bn
        moving_std = ops.sqrt(bn.moving_variance + bn.eps)
        weight, scales = self.quantize_weight(self.weight * (bn.gamma / moving_std).reshape(-1, 1, 1, 1))
        out = self._convolution(x, weight)
        conv_mean, conv_var = channel_moments(out)
        unfold = moving_std / bn.gamma
        batch_mean, batch_var = conv_mean * unfold, conv_var * unfold * unfold
        self._update_moving_statistics(batch_mean, batch_var, out.shape)
        batch_std = ops.sqrt(batch_var + bn.eps)
        bias = self.quantize_bias(bn.beta - bn.gamma * batch_mean / batch_std, act_scale, scales)
        out = self.output_range(ops.bias_add(out * (moving_std / batch_std).reshape(1, -1, 1, 1), bias))
        return ops.relu(out) if relu else out

    def _train_with_batch_statistics_on_kernels(self, x, relu):
        """:meth:`_train_with_batch_statistics` on the compiled kernels. The kernel also takes
        the moving statistics' and the output range's steps."""
        quantized = self.quantize_input(x)
        act_scale = item(quantized, 1)
        bn, observer = self.bn, self.output_range
        folded = self.fast_quant.fold_weight(self.weight, bn.gamma, bn.moving_variance, self.bn_eps)
        scales = item(folded, 1)
        out = self._convolution(item(quantized, 0), item(folded, 0))
        batchnorm = self.fast_quant.batchnorm_relu if relu else self.fast_quant.batchnorm
        # the kernel writes the moving statistics in place: any other reader must come before it
        # (the weight fold does: its output leads to the kernel's input)
        out = batchnorm(out, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, self.bn_eps, self.bn_keep,
                        act_scale, scales, observer.act_min, observer.act_max, observer.kernel_ema())
        return item(out, 0)

    def _train_depthwise_with_batch_statistics(self, x, relu):
        """:meth:`_train_with_batch_statistics_on_kernels` of a depthwise convolution, with the
        weight's fold and the convolution in the same operator: GhostNet has 41 such layers, and
        each operator fewer shortens the first step's graph compile. The operator reads the
        input's scale from its range once x is quantized, as ``ActivationScale`` does."""
        source, bn, observer = self.input_quant, self.bn, self.output_range
        if self.observes_input:
            x = item(observe_and_quantize(x, source, self.fast_quant), 0)
        op = self.fast_conv.qat_batchnorm_relu if relu else self.fast_conv.qat_batchnorm
        out = op(x, self.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, self.bn_eps, self.bn_keep,
                 source.act_min, source.act_max, observer.act_min, observer.act_max, observer.kernel_ema())
        return item(out, 0)

    def _update_moving_statistics(self, batch_mean, batch_var, shape):
        bn = self.bn
        keep = moving_share_kept(bn)
        n = shape[0] * shape[2] * shape[3]
        unbiased = ops.stop_gradient(batch_var) * n / max(n - 1, 1)
        ops.assign(bn.moving_mean, bn.moving_mean * keep + ops.stop_gradient(batch_mean) * (1 - keep))
        ops.assign(bn.moving_variance, bn.moving_variance * keep + unbiased * (1 - keep))

    def construct(self, x):
        return self.output(x, False)

    def with_relu(self, x):
        return self.output(x, True)

    def output(self, x, relu):
        """The layer's output, then a ReLU with ``relu`` (a constant)."""
        return self._output_path(x, relu)

    @property
    def _output_path(self):
        """The method that computes :meth:`output` in the current mode and configuration, picked
        as :class:`QuantizedInputConv`'s steps are."""
        if not self.training:
            return self._calibrating_output if self.output_range.calibrating else self._eval_output
        if self.bn is None or self.bn_frozen:
            return self._train_with_folded_weights
        if self.fast_quant is None:
            return self._train_with_batch_statistics
        if self.fuses_depthwise_batchnorm and is_fast_depthwise(self.fast_conv):
            return self._train_depthwise_with_batch_statistics
        return self._train_with_batch_statistics_on_kernels

    @property
    def _input_on_grid(self):
        # while calibrating, the range that quantized the input widens after it (ConcatQuant)
        return not self.observes_input and not self.output_range.calibrating

    def _eval_output(self, x, relu):
        params = self.eval_params()  # weight, bias, input scale, input zero point
        return self._quantized_input_convolution(x, item(params, 2), item(params, 3), item(params, 0),
                                                 item(params, 1), relu)

    def _calibrating_output(self, x, relu):
        x = self._input_observer(x)
        params = self.eval_params()
        # the output range is taken before the ReLU
        out = self.output_range(self._quantized_input_convolution(x, item(params, 2), item(params, 3),
                                                                  item(params, 0), item(params, 1), False))
        return ops.relu(out) if relu else out


class QuantDense(_FakeQuantLayer):
    """The classifier in fake-quant int8."""

    def __init__(self, dense):
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias
        self.bn = None

    def folded(self):
        return self.weight, self.bias

    def construct(self, x):
        if self.training:
            quantized = self.quantize_input(x)
            weight, bias = self.quantized_folded(item(quantized, 1))
            x = item(quantized, 0)
            return ops.matmul(x, weight.T) + bias
        x = self._input_observer(x)
        weight, bias, act_scale, zero_point = self.eval_params()
        x = fake_quant_activation(x, act_scale, zero_point, self.fast_quant)
        return ops.matmul(x, weight.T) + bias
