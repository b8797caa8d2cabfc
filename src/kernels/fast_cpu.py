"""A fast CPU path for GhostNet: its slow convolutions (depthwise ones and the 3-channel
stem), and, in training, the operators that cost more than PyTorch's or more to launch than
to run.

MindSpore 2.10's CPU Conv2D hands oneDNN plain NCHW layouts; for depthwise and 3-input-channel
convolutions oneDNN then falls back to its reference kernel, tens of times slower than a
plain loop. Here:

* depthwise convolutions run ``src/kernels/depthwise_conv.cc`` (forward, input gradient,
  weight gradient) as MindSpore AOT custom operators, compiled on first use
  (:mod:`src.kernels.library`). Without a compiler the framework's convolution is used and
  one warning says so;
* the stem runs as unfold + matrix product, both fast framework ops with gradients;
* BatchNorm in training (batch statistics) runs ``src/kernels/batchnorm.cc``, forward and
  backward (:class:`FastBatchNorm2d`); in eval it is the framework's;
* in training, a depthwise convolution with the BatchNorm (and ReLU) after it runs
  ``src/kernels/depthwise_batchnorm.cc``, one operator forward and one backward
  (:class:`FastConvBNAct`); in a ghost module, with the concatenation after the cheap
  branch (:class:`FastGhostModule`);
* a squeeze-excite gate's product runs ``src/kernels/channel_scale.cc`` (:class:`FastSqueezeExcite`);
* the optimizer's update of all parameters is one operator, ``src/kernels/optimizer.cc``
  (:class:`CompiledMomentum`, which ``src.train_utils.build_optimizer`` picks on the CPU);
* the fake-quant arithmetic of the int8 forms runs ``src/kernels/fake_quant.cc``
  (:mod:`src.kernels.quant_cpu`), and a depthwise QAT layer's training step with BatchNorm on
  batch statistics ``src/kernels/qat_depthwise.cc``, one operator forward and one backward.

:func:`enable_fast_cpu_path` switches a built network's cells over, in place, on CPU only;
parameters and their names stay as they are.
"""
import logging

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from src.ghostnet import ConvBNAct, GhostModule, SqueezeExcite, moving_share_kept
from src.kernels.library import build_kernel_library
from src.kernels.quant_cpu import fake_quant_kernels, qat_depthwise_batchnorm_ops

logger = logging.getLogger(__name__)

_ops = {}


def conv_geometry(conv):
    """(stride, padding, groups) of an ``nn.Conv2d`` (:func:`framework_conv` builds its operator)."""
    stride = conv.stride[2:] if len(conv.stride) == 4 else conv.stride
    return stride, conv.padding, conv.group


def framework_conv(geometry, weight_shape):
    """The framework's convolution operator of this ``geometry`` (:func:`conv_geometry`), padded
    on both sides: one primitive, which a graph compiles as one node, where ``ops.conv2d``
    parses into a handful of subgraphs a call (its argument checks)."""
    stride, padding, groups = geometry
    return ops.Conv2D(weight_shape[0], tuple(weight_shape[2:]), pad_mode="pad", pad=padding, stride=stride,
                      group=groups)


def apply_conv(x, weight, conv_op, fast_conv=None, bias=None):
    """The convolution, plus ``bias`` per output channel if given; ``fast_conv`` is its fast
    cell (:func:`fast_conv_for`), if any, else ``conv_op`` (:func:`framework_conv`) runs."""
    if bias is not None and is_fast_depthwise(fast_conv):
        return fast_conv(x, weight, bias)
    out = fast_conv(x, weight) if fast_conv is not None else conv_op(x, weight)
    # BiasAdd, not a broadcast Add: MindSpore's CPU kernel for it is about 2.5x faster
    return out if bias is None else ops.bias_add(out, bias)


def conv_out_size(size, kernel, stride, padding):
    """Output side of a convolution padded by ``padding`` on both sides."""
    return (size + 2 * padding - kernel) // stride + 1


def depthwise_conv_ops(stride):
    """``{variant: custom op}`` for ``stride``, with their backward; None without the library.

    Variants: ``plain`` (x, w), ``bias`` (x, w, b) and ``bias_relu`` (x, w, b), the last two
    with BatchNorm folded (inference, and int8 training with BatchNorm frozen), and ``quantized_input`` (x, w, b, scale, zero_point)
    and ``quantized_input_relu``, an int8 layer in eval: x fake-quantized to uint8 as it is
    read; no gradient; ``qat_batchnorm`` and ``qat_batchnorm_relu``, a QAT layer with BatchNorm
    on batch statistics in training (:func:`src.kernels.quant_cpu.qat_depthwise_batchnorm_ops`).
    """
    library = build_kernel_library()
    if library is None:
        return None
    if stride in _ops:
        return _ops[stride]
    backward = ops.Custom(f"{library}:DepthwiseBackward", out_shape=lambda grad, w, x: (x, w),
                          out_dtype=lambda grad, w, x: (x, x), func_type="aot")

    def out_shape(x, w, *bias):
        return [x[0], x[1], *(conv_out_size(x[i], w[i], stride, w[i] // 2) for i in (2, 3))]

    def bprop(x, weight, out, grad):
        return backward(grad, weight, x)

    def bprop_bias(x, weight, bias, out, grad):
        grad_x, grad_weight = backward(grad, weight, x)
        return grad_x, grad_weight, grad.sum(axis=(0, 2, 3))

    def bprop_bias_relu(x, weight, bias, out, grad):
        return bprop_bias(x, weight, bias, out, grad * (out > 0).astype(grad.dtype))

    _ops[stride] = {
        variant: ops.Custom(f"{library}:{function}", out_shape=out_shape, out_dtype=lambda x, *rest: x,
                            func_type="aot", bprop=backward)
        for variant, function, backward in (("plain", "DepthwiseForward", bprop),
                                            ("bias", "DepthwiseBiasForward", bprop_bias),
                                            ("bias_relu", "DepthwiseBiasReluForward", bprop_bias_relu))}
    for variant, function in (("quantized_input", "DepthwiseQuantizedInputForward"),
                              ("quantized_input_relu", "DepthwiseQuantizedInputReluForward")):
        _ops[stride][variant] = ops.Custom(f"{library}:{function}", out_shape=out_shape,
                                           out_dtype=lambda x, *rest: x, func_type="aot")
    _ops[stride].update(qat_depthwise_batchnorm_ops(library, out_shape))
    return _ops[stride]


def batchnorm_train_op(relu=False):
    """The training BatchNorm operator (followed by a ReLU with ``relu``), with its backward;
    None without the library.

    ``(x, gamma, beta, moving_mean, moving_variance, keep, eps) -> (y, batch mean,
    1 / sqrt(batch variance + eps), new moving mean, new moving variance)``: ``keep`` is the
    share of the moving statistics kept (:func:`src.ghostnet.moving_share_kept`)."""
    library = build_kernel_library()
    if library is None:
        return None
    key = "batchnorm_relu" if relu else "batchnorm"
    if key not in _ops:
        name = "BatchNormRelu" if relu else "BatchNorm"
        backward = ops.Custom(f"{library}:{name}TrainBackward",
                              out_shape=lambda *shapes: (shapes[-4], shapes[-3], shapes[-3]),
                              out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

        def bprop(x, gamma, beta, moving_mean, moving_variance, keep, eps, out, grad):
            reads = (grad[0], out[0], x) if relu else (grad[0], x)
            grad_x, grad_gamma, grad_beta = backward(*reads, gamma, out[1], out[2])
            return (grad_x, grad_gamma, grad_beta, ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                    ops.zeros_like(keep), ops.zeros_like(eps))

        _ops[key] = ops.Custom(f"{library}:{name}TrainForward",
                               out_shape=lambda x, gamma, *rest: (x, gamma, gamma, gamma, gamma),
                               out_dtype=lambda x, *rest: (x, x, x, x, x), func_type="aot", bprop=bprop)
    return _ops[key]


class FastBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training step (batch statistics, moving statistics updated)
    runs the compiled kernels; eval is the framework's. Same parameters, same names.
    :meth:`with_relu`: the BatchNorm and a ReLU after it, in training one kernel."""

    def construct(self, x):
        if not self.training:
            return self.bn_infer(x, self.gamma, self.beta, self.moving_mean, self.moving_variance)[0]
        return self._train(x, self.train_op)

    def with_relu(self, x):
        if not self.training:
            return ops.relu(self.construct(x))
        return self._train(x, self.train_relu_op)

    def _train(self, x, op):
        y, _, _, new_mean, new_variance = op(x, *self.statistics_inputs())
        self.update_moving_statistics(new_mean, new_variance)
        return y

    def statistics_inputs(self):
        """What a training kernel reads of this BatchNorm, in the kernels' order: gamma, beta, the
        moving mean and variance, the share kept, eps."""
        return self.gamma, self.beta, self.moving_mean, self.moving_variance, self.keep, self.eps_tensor

    def update_moving_statistics(self, new_mean, new_variance):
        ops.assign(self.moving_mean, ops.stop_gradient(new_mean))
        ops.assign(self.moving_variance, ops.stop_gradient(new_variance))


class FastConvBNAct(ConvBNAct):
    """``ConvBNAct`` whose ReLU runs in one kernel with the BatchNorm
    (:meth:`FastBatchNorm2d.with_relu`). A depthwise convolution, its BatchNorm and ReLU run as
    one operator in training, where ``depthwise_bn_ops`` holds it
    (:func:`depthwise_batchnorm_train_ops`). The same cell otherwise."""

    def construct(self, x):
        if self.depthwise_bn_ops is not None and self.bn is not None:
            if self.bn.training:  # batch statistics
                return self.depthwise_batchnorm(x, self.depthwise_bn_ops)
        if self.relu is None:
            return super().construct(x)
        if self.bn is not None:
            return self.bn.with_relu(self.conv(x))
        return super().construct(x)

    def depthwise_batchnorm(self, x, train_ops):
        """The convolution and the BatchNorm (with this cell's ReLU, if any) in training, as
        ``train_ops`` (:func:`depthwise_batchnorm_train_ops`) compute them; the moving
        statistics updated."""
        op = train_ops[0] if self.relu is None else train_ops[1]
        out, _, _, _, new_mean, new_variance = op(x, self.conv.weight, *self.bn.statistics_inputs())
        self.bn.update_moving_statistics(new_mean, new_variance)
        return out


def depthwise_batchnorm_train_op(stride, relu, concat=False):
    """The training operator of a depthwise convolution (``stride``) and the BatchNorm after it
    (src/kernels/depthwise_batchnorm.cc), then a ReLU with ``relu``; with ``concat``, a ghost
    module's cheap branch and the concatenation after it (stride 1). With its backward; None
    without the library.

    ``(x, weight, gamma, beta, moving_mean, moving_variance, keep, eps) -> (out, the
    convolution's output, batch mean, 1 / sqrt(batch variance + eps), new moving mean, new
    moving variance)``: out is ``BatchNorm(depthwise(x))``, with ``concat``
    ``concat(x, BatchNorm(depthwise(x)))``; the statistics as :func:`batchnorm_train_op`'s."""
    library = build_kernel_library()
    if library is None:
        return None
    key = ("depthwise_batchnorm", stride, relu, concat)
    if key not in _ops:
        name = ("GhostCheap" if concat else "DepthwiseBatchNorm") + ("Relu" if relu else "")
        # (grad_out, [out,] conv, x, weight, gamma, mean, inv_std) -> grads of x, weight, gamma, beta
        backward = ops.Custom(f"{library}:{name}TrainBackward",
                              out_shape=lambda *shapes: (shapes[-5], shapes[-4], shapes[-3], shapes[-3]),
                              out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot")

        def bprop(x, weight, gamma, beta, moving_mean, moving_variance, keep, eps, out, grad):
            reads = (grad[0], out[0]) if relu else (grad[0],)
            grads = backward(*reads, out[1], x, weight, gamma, out[2], out[3])
            return (*grads, ops.zeros_like(moving_mean), ops.zeros_like(moving_variance), ops.zeros_like(keep),
                    ops.zeros_like(eps))

        def out_shape(x, weight, gamma, *rest):
            conv = [x[0], x[1], *(conv_out_size(x[i], weight[i], stride, weight[i] // 2) for i in (2, 3))]
            return ([x[0], 2 * x[1], *x[2:]] if concat else conv), conv, gamma, gamma, gamma, gamma

        _ops[key] = ops.Custom(f"{library}:{name}TrainForward", out_shape=out_shape,
                               out_dtype=lambda x, *rest: (x,) * 6, func_type="aot", bprop=bprop)
    return _ops[key]


def depthwise_batchnorm_train_ops(stride, concat=False):
    """:func:`depthwise_batchnorm_train_op` without and with the ReLU."""
    return tuple(depthwise_batchnorm_train_op(stride, relu, concat) for relu in (False, True))


def depthwise_batchnorm_stride(conv_bn):
    """The stride of ``conv_bn``'s convolution where a ``ConvBNAct`` (its cells switched) is a
    fast depthwise convolution without bias and a fast BatchNorm, which
    :func:`depthwise_batchnorm_train_op` can run in training; else None."""
    conv = conv_bn.conv
    if not (isinstance(conv, FastConv2d) and is_fast_depthwise(conv.fast_conv) and not conv.has_bias
            and isinstance(conv_bn.bn, FastBatchNorm2d)):
        return None
    return conv_geometry(conv)[0][-1]


class FastGhostModule(GhostModule):
    """``GhostModule`` whose cheap branch (depthwise convolution, BatchNorm on batch statistics,
    ReLU) and the concatenation after it run as one operator in training, and one backward;
    the same cell otherwise (eval, BatchNorm folded, the int8 forms)."""

    def construct(self, x):
        cheap = self.cheap_operation
        if cheap.bn is not None and self.concat_quant is None:
            if cheap.bn.training:  # batch statistics
                return cheap.depthwise_batchnorm(self.primary_conv(x), self.cheap_train_ops)
        return super().construct(x)


def _takes_fused_cheap_branch(module):
    """Whether ``module`` (a ``GhostModule``, its cells switched) fits :class:`FastGhostModule`:
    a stride-1 depthwise convolution and BatchNorm that :func:`depthwise_batchnorm_train_op`
    runs, halves that fill the output, no int8 quantization."""
    return (not module.trim and module.concat_quant is None
            and depthwise_batchnorm_stride(module.cheap_operation) == 1)


def channel_scale_op():
    """``(x, gate) -> x * gate`` for an NCHW x and an (N, C, 1, 1) gate, with its backward;
    None without the library."""
    library = build_kernel_library()
    if library is None:
        return None
    if "channel_scale" not in _ops:
        backward = ops.Custom(f"{library}:ChannelScaleGrad", out_shape=lambda grad, x, gate: (x, gate),
                              out_dtype=lambda grad, x, gate: (x, x), func_type="aot")

        def bprop(x, gate, out, grad):
            return backward(grad, x, gate)

        _ops["channel_scale"] = ops.Custom(f"{library}:ChannelScale", out_shape=lambda x, gate: x,
                                           out_dtype=lambda x, gate: x, func_type="aot", bprop=bprop)
    return _ops["channel_scale"]


class FastSqueezeExcite(SqueezeExcite):
    """``SqueezeExcite`` whose product with the gate runs the compiled kernels."""

    def construct(self, x):
        return self.channel_scale(x, self.gate_of(x))


class CompiledMomentum(nn.Momentum):
    """``nn.Momentum`` (same moments, same names, same arithmetic bit for bit) whose update of
    every parameter runs in one compiled operator, in place, instead of up to three
    framework operators per parameter. ``decays``: each parameter's weight decay, in order.

    The operator writes the parameters and moments it is given as inputs, which the graph
    does not know: it runs last because it reads every gradient, and it runs at all because
    ``TrainOneStepCell`` returns the loss through a ``depend`` on the optimizer's result.
    The tests compare three steps with ``nn.Momentum``'s, value for value."""

    def __init__(self, params, learning_rate, momentum, decays, loss_scale, update_op):
        super().__init__(params, learning_rate, momentum, loss_scale=loss_scale)
        # MindSpore applies the decay to the scaled gradient, with the decay scaled alike
        self.scaled_decays = ms.Tensor([decay * loss_scale for decay in decays], ms.float32)
        self.inverse_scale = ms.Tensor([1.0 / loss_scale], ms.float32)
        self.update = update_op

    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        return self.update(lr, self.momentum, self.inverse_scale, self.scaled_decays, *self.params, *gradients,
                           *self.moments)


def momentum_update_op():
    """The operator of :class:`CompiledMomentum`; None without the library or off the CPU."""
    if ms.get_context("device_target") != "CPU":
        return None
    library = build_kernel_library()
    if library is None:
        return None
    if "momentum" not in _ops:
        _ops["momentum"] = ops.Custom(f"{library}:SgdMomentumUpdate", out_shape=lambda *shapes: [1],
                                      out_dtype=lambda *dtypes: dtypes[0], func_type="aot")
    return _ops["momentum"]


class DepthwiseConvCPU(nn.Cell):
    """Depthwise convolution (padding kernel // 2) through the compiled kernels; with a bias,
    optionally followed by a fused ReLU (see :func:`fuse_relu_for_inference`).
    ``quantized_input(x, w, b, scale, zero_point)``: on x fake-quantized to uint8, for eval;
    ``quantized_input_relu``: the same, then a ReLU; ``bias_only(x, w, b)`` and
    ``bias_relu(x, w, b)``: without, with a ReLU, whatever the cell fuses; ``qat_batchnorm``
    and ``qat_batchnorm_relu``: see :func:`depthwise_conv_ops`."""

    def __init__(self, variants, relu=False):
        super().__init__()
        self.plain = variants["plain"]
        self.with_bias = variants["bias_relu" if relu else "bias"]
        self.bias_only, self.bias_relu = variants["bias"], variants["bias_relu"]
        self.quantized_input = variants["quantized_input"]
        self.quantized_input_relu = variants["quantized_input_relu"]
        self.qat_batchnorm, self.qat_batchnorm_relu = variants["qat_batchnorm"], variants["qat_batchnorm_relu"]
        self.variants = variants
        self.relu = relu  # whether the ReLU is fused: what fuse_relu_for_inference did, for a reader

    def construct(self, x, weight, bias=None):
        if bias is None:
            return self.plain(x, weight)
        return self.with_bias(x, weight, bias)


def is_fast_depthwise(fast_conv):
    return isinstance(fast_conv, DepthwiseConvCPU)


class UnfoldConv(nn.Cell):
    """A dense convolution as unfold + matrix product: fast for the 3-channel stem."""

    def __init__(self, kernel, stride, padding):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def construct(self, x, weight):
        n, _, h, w = x.shape
        out_h = conv_out_size(h, self.kernel, self.stride, self.padding)
        out_w = conv_out_size(w, self.kernel, self.stride, self.padding)
        columns = ops.unfold(x, self.kernel, 1, self.padding, self.stride)  # (N, C*K*K, L)
        out = ops.matmul(weight.reshape(weight.shape[0], -1), columns)
        return out.reshape(n, weight.shape[0], out_h, out_w)


def fast_conv_for(weight_shape, stride, padding, groups):
    """The fast cell for a convolution of this geometry, or None where the framework's is fine."""
    out_channels, in_per_group, kernel, kernel_w = weight_shape
    stride = stride if isinstance(stride, int) else stride[-1]
    if not isinstance(padding, int):
        if len(set(padding)) != 1:
            return None
        padding = padding[0]
    symmetric = kernel == kernel_w and kernel % 2 == 1 and padding == kernel // 2
    if groups == out_channels and in_per_group == 1 and symmetric and stride in (1, 2):
        variants = depthwise_conv_ops(stride)
        return DepthwiseConvCPU(variants) if variants is not None else None
    if groups == 1 and in_per_group == 3:
        return UnfoldConv(kernel, stride, padding)
    return None


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose convolution runs a fast cell; same parameters, same names."""

    def construct(self, x):
        if isinstance(self.fast_conv, DepthwiseConvCPU) and self.has_bias:
            return self.fast_conv(x, self.weight, self.bias)
        out = self.fast_conv(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        return out


def enable_fast_cpu_path(net):
    """Switch ``net``'s depthwise and stem convolutions, its training BatchNorms (with the ReLU
    after them, :class:`FastConvBNAct`), its ghost modules' cheap branches in training
    (:class:`FastGhostModule`) and its squeeze-excite products to the fast cells, in place,
    when the device is the CPU. Returns ``net``; elsewhere it is returned unchanged.

    Besides ``nn.Conv2d``, a cell with ``accepts_fast_conv = True`` (the quantized layers of
    src/quant/) takes one: it has ``weight``, ``geometry``, ``conv_op`` and a ``fast_conv``
    it calls through :func:`apply_conv`. A cell with ``accepts_fast_quant = True`` (those layers and
    their observers) takes the compiled fake-quant arithmetic as ``fast_quant``.
    """
    if ms.get_context("device_target") != "CPU":
        return net
    switched = 0
    for _, cell in list(net.cells_and_names()):
        if getattr(cell, "accepts_fast_quant", False) and cell.fast_quant is None:
            cell.fast_quant = fake_quant_kernels()
        if type(cell) is nn.BatchNorm2d and cell.use_batch_statistics is None:  # pylint: disable=unidiomatic-typecheck
            train_op = batchnorm_train_op()
            if train_op is not None:
                cell.__class__ = FastBatchNorm2d  # same object: parameters and their names unchanged
                cell.train_op, cell.train_relu_op = train_op, batchnorm_train_op(relu=True)
                cell.keep = ms.Tensor([moving_share_kept(cell)], ms.float32)
                cell.eps_tensor = ms.Tensor([cell.eps], ms.float32)
        elif type(cell) is nn.Conv2d:  # pylint: disable=unidiomatic-typecheck (subclasses stay)
            fast = fast_conv_for(cell.weight.shape, *conv_geometry(cell))
            if fast is not None:
                cell.__class__ = FastConv2d  # same object: parameters and their names unchanged
                cell.fast_conv = fast
                switched += 1
        elif getattr(cell, "accepts_fast_conv", False) and cell.fast_conv is None:
            fast = fast_conv_for(cell.weight.shape, *cell.geometry)
            if fast is not None:
                cell.fast_conv = fast
                switched += 1
    channel_scale = channel_scale_op()
    for _, cell in net.cells_and_names():
        if type(cell) is GhostModule and _takes_fused_cheap_branch(cell):  # pylint: disable=unidiomatic-typecheck
            cell.__class__ = FastGhostModule
            cell.cheap_train_ops = depthwise_batchnorm_train_ops(1, concat=True)
        elif type(cell) is ConvBNAct and isinstance(cell.bn, FastBatchNorm2d):  # pylint: disable=unidiomatic-typecheck
            cell.__class__ = FastConvBNAct
            stride = depthwise_batchnorm_stride(cell)
            cell.depthwise_bn_ops = None if stride is None else depthwise_batchnorm_train_ops(stride)
        elif type(cell) is SqueezeExcite and channel_scale is not None:  # pylint: disable=unidiomatic-typecheck
            cell.__class__ = FastSqueezeExcite
            cell.channel_scale = channel_scale
    logger.debug("fast CPU path: %d convolutions switched, BatchNorm and squeeze-excite cells too", switched)
    return net


def fuse_relu_for_inference(net):
    """Fold each ReLU that follows a fast depthwise convolution with a bias (BatchNorm folded)
    into the kernel, in place, walking ``net.conv_bn_pairs()``. For eval mode; returns ``net``."""
    for slot in net.conv_bn_pairs():
        conv = slot.conv
        if slot.relu is not None and slot.bn is None and isinstance(conv, FastConv2d) \
                and isinstance(conv.fast_conv, DepthwiseConvCPU) and conv.has_bias:
            conv.fast_conv = DepthwiseConvCPU(conv.fast_conv.variants, relu=True)
            slot.drop_relu()
    return net
