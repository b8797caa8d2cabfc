"""The steps between the forms, named as torch.ao names them: :func:`prepare` (float ->
fake-quant), :func:`calibrate` (set the activation ranges), :func:`convert` (fake-quant ->
int8). The layers are swapped through ``GhostNet.conv_bn_pairs()``."""
import logging

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np

from src.checkpoint import load_strict
from src.ghostnet import ConvBNAct, GhostNet
from src.quant.fake_quant import ConcatQuant, QuantConv2d, QuantConvBNAct, QuantDense
from src.quant.int8 import Int8ConcatQuant, Int8Conv2d, Int8Dense
from src.quant.observers import RangeObserver
from src.quant.primitives import activation_qparams, bias_integers, weight_integers, weight_scales

logger = logging.getLogger(__name__)


def _rename_parameters(net):
    """Give every parameter its path as name (optimizer moments and checkpoints use it)."""
    for name, param in net.parameters_and_names():
        param.name = name
    return net


def _swap_layers(net, make_conv, make_dense, make_concat_quant):
    """Swap every convolution (with its BatchNorm, where one follows) and the classifier, and
    give every ghost module one quantization (see :func:`share_concat_quantization`). A swapped
    convolution computes its BatchNorm and ReLU itself (``output(x, relu)``): the ``ConvBNAct``
    around it becomes a :class:`QuantConvBNAct`."""
    if not isinstance(net, GhostNet):
        raise TypeError(f"expected a GhostNet, got {type(net).__name__}")
    for slot in net.conv_bn_pairs():
        slot.replace(make_conv(slot.conv, slot.bn))
        if type(slot.owner) is ConvBNAct:  # pylint: disable=unidiomatic-typecheck (subclasses stay)
            slot.owner.__class__ = QuantConvBNAct  # same object: parameters and their names unchanged
            slot.owner.relu_inside = slot.relu is not None
    net.classifier = make_dense(net.classifier)
    share_concat_quantization(net, make_concat_quant)
    return _rename_parameters(net)


def share_concat_quantization(net, make_concat_quant):
    """One uint8 scale and zero point per ghost module: its cheap operation's input
    quantization quantizes both halves (``make_concat_quant(cheap layer)``), so that the
    concatenation is a copy, and a convolution that reads the module's output directly
    reads it in that quantization too, instead of requantizing it. In a checkpoint that
    quantization is recorded once, under the cheap operation's name."""
    for ghost in net.ghost_modules():
        cheap = ghost.module.cheap_operation.conv
        ghost.module.concat_quant = make_concat_quant(cheap)
        readers = [cheap] if ghost.reader is None else [cheap, ghost.reader.conv]
        for layer in readers:
            layer.read_quantized_by(cheap)


def prepare(net):
    """Turn a float GhostNet (weights loaded) into its fake-quant form, in place."""
    return _swap_layers(net, QuantConv2d, QuantDense, lambda cheap: ConcatQuant(cheap.input_quant))


def build_int8_network(width=1.0, num_classes=37):
    """The (empty) int8 network an int8 checkpoint loads into."""
    return _swap_layers(GhostNet(width=width, num_classes=num_classes),
                        lambda conv, bn: Int8Conv2d(conv), Int8Dense, Int8ConcatQuant)


def fake_quant_layers(net):
    return [(name, cell) for name, cell in net.cells_and_names()
            if isinstance(cell, (QuantConv2d, QuantDense))]


def int8_params(net):
    """``{name: ndarray}`` of the int8 form (an int8 checkpoint's content), computed from a
    fake-quant network in eval mode."""
    params = {}
    quantizations = set()  # an input quantization shared by layers is recorded once, by the first
    for name, layer in fake_quant_layers(net):
        weight, bias = layer.folded()
        act_scale, zero_point = activation_qparams(layer.input_quant.act_min, layer.input_quant.act_max)
        scales = weight_scales(weight)
        q_weight = weight_integers(weight, scales)
        bias = bias if bias is not None else ops.zeros(weight.shape[0], ms.float32)
        q_bias = bias_integers(bias, act_scale * scales)
        params[f"{name}.weight"] = q_weight.asnumpy().astype(np.int8)
        params[f"{name}.weight_scale"] = scales.asnumpy().astype(np.float32)
        params[f"{name}.bias"] = q_bias.asnumpy().astype(np.int32)
        if id(layer.input_quant) not in quantizations:
            quantizations.add(id(layer.input_quant))
            params[f"{name}.act_scale"] = act_scale.asnumpy().astype(np.float32).reshape(1)
            params[f"{name}.act_zero_point"] = zero_point.asnumpy().astype(np.int32).reshape(1)
        if isinstance(layer, QuantConv2d):
            params[f"{name}.output_min"] = layer.output_range.act_min.asnumpy().astype(np.float32)
            params[f"{name}.output_max"] = layer.output_range.act_max.asnumpy().astype(np.float32)
    return params


def convert(net):
    """The int8 network holding what the fake-quant network ``net`` computes (eval mode)."""
    net.set_train(False)
    int8_net = build_int8_network(width=net.width, num_classes=net.num_classes)
    load_strict(int8_net, int8_params(net), source="the fake-quant network")
    return int8_net


def _set_compile_flag(cells, flag, value):
    """Set the compile-time ``flag`` of ``cells`` to ``value``; whether any changed."""
    changed = [cell for cell in cells if getattr(cell, flag) != bool(value)]
    for cell in changed:
        setattr(cell, flag, bool(value))
    return bool(changed)


def set_bn_frozen(net, frozen):
    """Freeze (or unfreeze) the BatchNorm statistics of every fake-quant convolution of ``net``.
    Returns whether any layer changed. The switch is read when a graph compiles: a training
    step compiled before a change goes on computing as before, so build a new one (train.py
    does)."""
    return _set_compile_flag([layer for _, layer in fake_quant_layers(net)
                              if isinstance(layer, QuantConv2d) and layer.bn is not None], "bn_frozen", frozen)


def set_observers_frozen(net, frozen):
    """Freeze (or unfreeze) every activation range of ``net`` in training (torch.ao's
    ``disable_observer``). Returns whether any changed; read when a graph compiles, as
    :func:`set_bn_frozen`. A frozen training step has no range updates, which makes it about
    a quarter quicker to compile."""
    return _set_compile_flag(range_observers(net), "frozen", frozen)


def range_observers(net):
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, RangeObserver)]


class _ObservingRun(nn.Cell):
    """``net`` as a top-level cell of its own, so that its graph compiles with the observers'
    ``calibrating`` as set now, apart from the eval graph of ``net`` itself."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)  # parameter names stay their paths in net
        self.net = net

    def construct(self, x):
        return self.net(x)


# PyNative mode runs each operator from Python: on two CPU cores about 1 s a batch more than a
# compiled graph (GhostNet, 64 px, batch 16), and nothing to compile, where the calibration graph
# took 10-18 s to compile. With fewer batches than this, calibrate() runs PyNative mode.
EAGER_CALIBRATION_BATCHES = 16


def observe_ranges(net, batches, eager=False):
    """Run ``net`` in eval mode on each input of ``batches`` while every observer widens its
    range, from empty, to every value seen (BatchNorm statistics fixed). Returns the count run.
    ``eager``: in PyNative mode (the same operators, the same ranges), the context's mode
    restored after."""
    observers = range_observers(net)
    mode = ms.get_context("mode")
    seen = 0
    try:
        for observer in observers:
            observer.reset()
            observer.calibrating = True
        run = _ObservingRun(net)
        run.set_train(False)
        if eager:
            ms.set_context(mode=ms.PYNATIVE_MODE)
        for seen, images in enumerate(batches, 1):
            run(images)
    finally:
        ms.set_context(mode=mode)
        for observer in observers:
            observer.calibrating = False
    return seen


def calibrate(net, dataset, num_batches):
    """Set every activation range from ``num_batches`` batches of ``dataset`` (see
    :func:`observe_ranges`): a MindSpore dataset, or an iterable of ``(images, labels)``."""
    source = dataset.create_tuple_iterator(num_epochs=1) if hasattr(dataset, "create_tuple_iterator") else dataset

    def batches():
        for seen, (images, _) in enumerate(source, 1):
            yield images
            logger.info("calibration batch %d/%d", seen, num_batches)
            if seen >= num_batches:
                return

    seen = observe_ranges(net, batches(), eager=num_batches < EAGER_CALIBRATION_BATCHES)
    if seen < num_batches:
        logger.warning("calibrated on %d batches: the dataset has no more", seen)
    return seen
