import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import pytest
from mindspore import Tensor

from src.ghostnet import GhostNet, conv2d
from src.quant import (ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, WEIGHT_QMIN, RangeObserver, QuantConv2d,
                       QuantDense, build_int8_network, int8_params, observe_ranges, prepare, set_bn_frozen,
                       set_observers_frozen)
from src.quant.primitives import fake_quant_activation, fake_quant_weight
from src.checkpoint import CheckpointKind, load_strict

RNG = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return Tensor((RNG.standard_normal(shape) * scale).astype(np.float32))


def calibrate_layer(layer, *batches):
    observe_ranges(layer, batches)


def calibrate_network(net, x):
    observe_ranges(net, [x])


def integer_conv(x, w, stride, pad, groups):
    """Exact integer convolution: int values summed in float64 (exact below 2**53)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, width = x.shape
    out_ch, in_per_group, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (width - k) // stride + 1
    out = np.zeros((n, out_ch, oh, ow))
    per_group_out = out_ch // groups
    for g in range(groups):
        xs = x[:, g * in_per_group:(g + 1) * in_per_group]
        ws = w[g * per_group_out:(g + 1) * per_group_out].astype(np.float64)
        for i in range(k):
            for j in range(k):
                patch = xs[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out[:, g * per_group_out:(g + 1) * per_group_out] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


def integer_reference(params, prefix, x, stride=1, pad=0, groups=1, dense=False):
    """int8 weights x uint8 activations summed in int32, int32 bias added, then rescaled."""
    scale = params[f"{prefix}.act_scale"][0]
    zero_point = params[f"{prefix}.act_zero_point"][0]
    x_q = np.clip(np.floor(x / scale + 0.5) + zero_point, ACT_QMIN, ACT_QMAX).astype(np.int64)
    weight = params[f"{prefix}.weight"].astype(np.int64)
    if dense:
        acc = (x_q - zero_point) @ weight.T
        bias_shape = (1, -1)
    else:
        acc = integer_conv(x_q - zero_point, weight, stride, pad, groups)
        bias_shape = (1, -1, 1, 1)
    acc = acc + params[f"{prefix}.bias"].reshape(bias_shape)
    assert np.abs(acc).max() < 2 ** 31  # fits the int32 accumulator
    return acc * (scale * params[f"{prefix}.weight_scale"]).reshape(bias_shape)


def use_compiled_kernels(cell):
    """Give every cell of ``cell`` that takes them the compiled fake-quant kernels (skip without a compiler)."""
    from src.kernels.quant_cpu import fake_quant_kernels

    kernels = fake_quant_kernels()
    if kernels is None:
        pytest.skip("the CPU kernels cannot be built here (no C++ compiler)")
    for _, child in cell.cells_and_names():
        if getattr(child, "accepts_fast_quant", False):
            child.fast_quant = kernels


class Wrap(nn.Cell):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x):
        return self.layer(x)


def bn_with_statistics(channels):
    bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)
    bn.gamma.set_data(Tensor(RNG.uniform(0.5, 1.5, channels).astype(np.float32)))
    bn.beta.set_data(Tensor(RNG.normal(0, 0.1, channels).astype(np.float32)))
    bn.moving_mean.set_data(Tensor(RNG.normal(0, 0.1, channels).astype(np.float32)))
    bn.moving_variance.set_data(Tensor(RNG.uniform(0.5, 1.5, channels).astype(np.float32)))
    return bn


@pytest.mark.parametrize("in_ch, out_ch, kernel, stride, groups, with_bn", [
    (3, 16, 3, 2, 1, True),      # stem
    (24, 24, 5, 2, 24, True),    # stride-2 depthwise
    (16, 8, 1, 1, 1, True),      # ghost primary 1x1
    (72, 20, 1, 1, 1, False),    # squeeze-excite reduce, with bias
])
def test_fake_quant_conv_equals_the_integer_reference(in_ch, out_ch, kernel, stride, groups, with_bn):
    conv = conv2d(in_ch, out_ch, kernel, stride, groups, has_bias=not with_bn)
    if not with_bn:
        conv.bias.set_data(randn(out_ch, scale=0.1))
    layer = Wrap(QuantConv2d(conv, bn_with_statistics(out_ch) if with_bn else None))
    x = randn(2, in_ch, 11, 13, scale=2.0)
    calibrate_layer(layer.layer, x, randn(2, in_ch, 11, 13))
    fake = layer(x).asnumpy()
    params = int8_params(layer)
    reference = integer_reference(params, "layer", x.asnumpy(), stride, kernel // 2, groups)
    assert fake.shape == reference.shape
    np.testing.assert_allclose(fake, reference, atol=1e-5 * np.abs(reference).max(), rtol=0)


def test_fake_quant_classifier_equals_the_integer_reference():
    layer = Wrap(QuantDense(nn.Dense(64, 10)))
    x = Tensor(np.maximum(randn(5, 64).asnumpy(), 0))  # post-ReLU features
    calibrate_layer(layer.layer, x)
    params = int8_params(layer)
    reference = integer_reference(params, "layer", x.asnumpy(), dense=True)
    np.testing.assert_allclose(layer(x).asnumpy(), reference, atol=1e-5 * np.abs(reference).max(), rtol=0)


def test_stored_integers_lie_in_their_ranges():
    net = prepare(GhostNet(width=0.5, num_classes=4))
    calibrate_network(net, randn(2, 3, 32, 32, scale=3.0))
    params = int8_params(net)
    weights = [v for k, v in params.items() if k.endswith(".weight")]
    assert len(weights) == 96
    assert all(w.dtype == np.int8 for w in weights)
    # symmetric: the largest magnitude of each channel maps to 127, never to -129 or 128
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == WEIGHT_QMAX
    assert min(int(w.min()) for w in weights) >= WEIGHT_QMIN
    zero_points = np.concatenate([v for k, v in params.items() if k.endswith("act_zero_point")])
    assert zero_points.dtype == np.int32 and zero_points.min() >= ACT_QMIN and zero_points.max() <= ACT_QMAX
    assert all(v.dtype == np.int32 for k, v in params.items() if k.endswith(".bias"))
    assert all(v.min() > 0 for k, v in params.items() if k.endswith(("act_scale", "weight_scale")))


def test_weight_quantization_clips_to_int8_not_129():
    weight = Tensor(np.array([[-10.0, -6.4, 0.03, 6.35, 10.0]], np.float32))
    out = fake_quant_weight(weight, Tensor(np.array([0.05], np.float32))).asnumpy() / 0.05
    np.testing.assert_allclose(out, [[-128, -128, 1, 127, 127]], atol=1e-4)


def test_activation_fake_quant_is_on_the_uint8_grid_and_clipped():
    scale, zero_point = Tensor(np.float32(0.1)), Tensor(np.float32(20.0))
    x = Tensor(np.array([-5.0, -2.0, -0.04, 0.0, 0.26, 23.5, 30.0], np.float32))
    q = fake_quant_activation(x, scale, zero_point).asnumpy() / 0.1 + 20
    np.testing.assert_allclose(q, [0, 0, 20, 20, 23, 255, 255], atol=1e-4)


def test_straight_through_gradient_is_clipped_to_the_range():
    scale, zero_point = Tensor(np.float32(0.1)), Tensor(np.float32(20.0))
    x = Tensor(np.array([-5.0, -1.0, 0.33, 23.0, 30.0], np.float32))
    grad = ms.grad(lambda v: fake_quant_activation(v, scale, zero_point).sum())(x).asnumpy()
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 0])
    w = Tensor(np.array([[0.123, -0.5, 0.26]], np.float32))
    grad_w = ms.grad(lambda v: (fake_quant_weight(v, Tensor(np.array([0.01], np.float32))) * 2).sum())(w)
    np.testing.assert_array_equal(grad_w.asnumpy(), [[2, 2, 2]])


@pytest.mark.parametrize("bn_frozen, observers_frozen", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["batch-statistics", "bn-frozen", "ranges-frozen", "bn-and-ranges-frozen"])
def test_gradients_reach_weights_bn_and_inputs_of_the_fake_quant_network(bn_frozen, observers_frozen):
    ms.set_seed(5)
    net = prepare(GhostNet(width=0.5, num_classes=4, dropout=0.0))
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    direction = Tensor(rng.standard_normal((2, 4)).astype(np.float32))  # a linear loss: its gradient does not vanish
    if bn_frozen:
        # BatchNorm on its (initial) moving statistics leaves activations at each layer's own
        # scale, as in eval: ranges calibrated on x fit them, so no input rounds to all zeros
        observe_ranges(net, [x])
    else:
        # ranges that hold nearly every batch-normalised activation at a fine step, so the
        # test sees the straight-through path rather than clipping
        for _, q in net.cells_and_names():
            if isinstance(q, RangeObserver):
                q.act_min.set_data(Tensor(np.full(1, -8.0, np.float32)))
                q.act_max.set_data(Tensor(np.full(1, 8.0, np.float32)))
    set_bn_frozen(net, bn_frozen)
    set_observers_frozen(net, observers_frozen)
    net.set_train(True)
    params = net.trainable_params()
    grads = ms.grad(lambda images: (net(images) * direction).sum(), grad_position=0, weights=params)(x)
    input_grad, weight_grads = grads
    assert np.abs(input_grad.asnumpy()).sum() > 0
    missing = [p.name for p, g in zip(params, weight_grads) if not np.abs(g.asnumpy()).sum() > 0]
    assert not missing


def test_bn_statistics_update_until_frozen_then_training_computes_what_eval_does():
    layer = QuantConv2d(conv2d(4, 6, 3), bn_with_statistics(6))
    calibrate_layer(layer, randn(2, 4, 8, 8))
    layer.set_train(True)
    before = layer.bn.moving_mean.asnumpy().copy()
    layer(randn(2, 4, 8, 8) + 3.0)
    updated = layer.bn.moving_mean.asnumpy().copy()
    assert not np.allclose(before, updated)
    assert set_bn_frozen(layer, True) and not set_bn_frozen(layer, True)  # reports a change once
    x = randn(2, 4, 8, 8) + 3.0
    trained = layer(x).asnumpy()
    np.testing.assert_array_equal(layer.bn.moving_mean.asnumpy(), updated)
    layer.set_train(False)  # eval reads the input range the training call left
    np.testing.assert_allclose(layer(x).asnumpy(), trained, rtol=0, atol=1e-6)


def test_frozen_ranges_stay_and_the_frozen_training_step_computes_what_eval_does():
    ms.set_seed(6)
    net = prepare(GhostNet(width=0.5, num_classes=4, dropout=0.0))
    rng = np.random.default_rng(6)
    calibrate_network(net, Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
    observers = [cell for _, cell in net.cells_and_names() if isinstance(cell, RangeObserver)]
    calibrated = [(o.act_min.asnumpy().copy(), o.act_max.asnumpy().copy()) for o in observers]
    net.set_train(True)
    x = Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32) * 3.0)  # wider: moving ranges would widen
    net(x)
    assert any(not np.array_equal(o.act_max.asnumpy(), high) for o, (_, high) in zip(observers, calibrated))
    for o, (low, high) in zip(observers, calibrated):
        o.act_min.set_data(Tensor(low))
        o.act_max.set_data(Tensor(high))
    assert set_observers_frozen(net, True) and not set_observers_frozen(net, True)  # reports a change once
    set_bn_frozen(net, True)
    net.set_train(True)
    trained = net(x).asnumpy()
    assert all(np.array_equal(o.act_min.asnumpy(), low) and np.array_equal(o.act_max.asnumpy(), high)
               for o, (low, high) in zip(observers, calibrated))
    net.set_train(False)
    np.testing.assert_allclose(net(x).asnumpy(), trained, rtol=0, atol=1e-5)


def test_int8_network_reproduces_the_fake_quant_network():
    ms.set_seed(7)
    float_net = GhostNet(width=0.5, num_classes=4)
    net = prepare(float_net)
    x = randn(3, 3, 40, 40)
    calibrate_network(net, x)
    params = int8_params(net)
    int8 = build_int8_network(width=0.5, num_classes=4)
    load_strict(int8, params)
    int8.set_train(False)
    np.testing.assert_allclose(int8(x).asnumpy(), net(x).asnumpy(), atol=1e-5)
    assert CheckpointKind.of(params) == CheckpointKind.INT8
    assert CheckpointKind.of({n: p for n, p in net.parameters_and_names()}) == CheckpointKind.FAKE_QUANT
    assert CheckpointKind.of({n: p for n, p in GhostNet(width=0.5).parameters_and_names()}) == CheckpointKind.FLOAT


def test_freezing_reaches_every_folded_layer():
    float_net = GhostNet(width=0.5, num_classes=4)
    batch_norms = sum(isinstance(c, nn.BatchNorm2d) for _, c in float_net.cells_and_names())
    net = prepare(float_net)
    assert set_bn_frozen(net, True)
    flags = [layer.bn_frozen for _, layer in net.cells_and_names() if isinstance(layer, QuantConv2d) and layer.bn]
    assert len(flags) == batch_norms == 80 and all(flags)
    folded = {id(layer.bn) for _, layer in net.cells_and_names() if isinstance(layer, QuantConv2d)}
    assert all(id(c) in folded for _, c in net.cells_and_names() if isinstance(c, nn.BatchNorm2d))


def test_fake_quant_checkpoints_with_the_retired_switches_still_load():
    """Fake-quant checkpoints written before the observers' calibration switch and the
    convolutions' BatchNorm freeze switch became compile-time flags hold a `calibrating` entry
    per observer and a `bn_frozen` entry per convolution with BatchNorm; they load, and
    nothing else unexpected does."""
    net = prepare(GhostNet(width=0.5, num_classes=4))
    params = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    observers = [name for name, cell in net.cells_and_names() if isinstance(cell, RangeObserver)]
    folded = [name for name, cell in net.cells_and_names() if isinstance(cell, QuantConv2d) and cell.bn]
    old = dict(params, **{f"{name}.calibrating": np.zeros(1, np.float32) for name in observers},
               **{f"{name}.bn_frozen": np.ones(1, np.float32) for name in folded})
    assert len(old) == len(params) + len(observers) + len(folded) > len(params) + len(observers)
    load_strict(prepare(GhostNet(width=0.5, num_classes=4)), old)
    with pytest.raises(ValueError, match="unexpected"):
        load_strict(prepare(GhostNet(width=0.5, num_classes=4)), dict(params, **{"stray.weight": np.zeros(1)}))


@pytest.mark.parametrize("compiled", [False, True], ids=["framework", "kernels"])
def test_qat_moving_statistics_take_the_batch_share_that_batch_norm_does(compiled):
    """nn.BatchNorm2d(momentum=0.9) moves its statistics a tenth of the way to the batch's
    (MindSpore stores 0.1 as `momentum`); one QAT step must do the same."""
    ms.set_seed(3)
    conv = conv2d(4, 6, 1)
    bn = nn.BatchNorm2d(6, momentum=0.9)
    reference = nn.BatchNorm2d(6, momentum=0.9)
    layer = QuantConv2d(conv, bn)
    if compiled:
        use_compiled_kernels(layer)
    x = randn(8, 4, 6, 6) + 3.0
    calibrate_layer(layer, x)
    layer.set_train(True)
    layer(x)
    reference.set_train(True)
    reference(ops.conv2d(x, conv.weight, None, 1, "pad", 0))  # the float convolution's batch statistics
    for ours, theirs in ((bn.moving_mean, reference.moving_mean), (bn.moving_variance, reference.moving_variance)):
        theirs = theirs.asnumpy()
        np.testing.assert_allclose(ours.asnumpy(), theirs, rtol=0.03, atol=0.03 * np.abs(theirs).max())


def test_calibration_keeps_every_parameter_named_by_its_path():
    """Optimizer moments and checkpoints are named after Parameter.name."""
    net = prepare(GhostNet(width=0.5, num_classes=4))
    observe_ranges(net, [randn(1, 3, 32, 32)])
    assert [p.name for p in net.get_parameters()] == [name for name, _ in net.parameters_and_names()]


def test_each_ghost_module_quantizes_both_halves_on_one_grid_that_its_reader_shares():
    """TFLite's int8 spec: a concatenation's inputs and output share one scale and zero point,
    so concatenating is a copy. The layer reading the module's output directly shares it too."""
    ms.set_seed(9)
    net = prepare(GhostNet(width=0.5, num_classes=4))
    x = randn(2, 3, 48, 48, scale=2.0)
    calibrate_network(net, x)
    params = int8_params(net)
    int8 = build_int8_network(width=0.5, num_classes=4)
    load_strict(int8, params)
    int8.set_train(False)
    ghosts = int8.ghost_modules()
    assert len(ghosts) == 32 and sum(g.reader is not None for g in ghosts) == 11
    for ghost in ghosts:
        cheap = ghost.module.cheap_operation.conv
        if ghost.reader is not None:
            assert ghost.reader.conv.act_scale is cheap.act_scale
            assert f"{ghost.reader.name}.act_scale" not in params
        assert f"{ghost.name}.cheap_operation.conv.act_scale" in params
    block = int8.blocks[1]  # stride 2: ghost1's output goes to the depthwise convolution
    features = int8.relu(int8.conv_stem(x))
    features = int8.blocks[0](features)
    out = block.ghost1(features).asnumpy()
    cheap = block.ghost1.cheap_operation.conv
    scale, zero_point = cheap.act_scale.asnumpy()[0], cheap.act_zero_point.asnumpy()[0]
    levels = out / scale + zero_point
    half = out.shape[1] // 2
    for part in (levels[:, :half], levels[:, half:]):
        np.testing.assert_allclose(part, np.round(part), atol=1e-3)
        assert part.min() >= ACT_QMIN - 1e-3 and part.max() <= ACT_QMAX + 1e-3
        assert len(np.unique(np.round(part))) > 10  # not all clipped to one level
    assert block.dw.conv.act_scale is cheap.act_scale


@pytest.mark.parametrize("kind", ["int8", "fake-quant"])
def test_checkpoints_from_before_one_scale_per_concatenation_are_refused_with_the_fix(kind):
    """Until each ghost module had one quantization, the layer reading it had its own: such a
    checkpoint holds one entry per reader that the network no longer has."""
    from src.errors import CheckpointError

    net = prepare(GhostNet(width=0.5, num_classes=4))
    calibrate_network(net, randn(1, 3, 32, 32))
    reader = "blocks.0.ghost2.primary_conv.conv"
    if kind == "int8":
        params = int8_params(net)
        old = dict(params, **{f"{reader}.act_scale": np.ones(1, np.float32),
                              f"{reader}.act_zero_point": np.zeros(1, np.int32)})
        target = build_int8_network(width=0.5, num_classes=4)
    else:
        params = {name: p.asnumpy() for name, p in net.parameters_and_names()}
        old = dict(params, **{f"{reader}.input_quant.act_min": np.zeros(1, np.float32),
                              f"{reader}.input_quant.act_max": np.ones(1, np.float32)})
        target = prepare(GhostNet(width=0.5, num_classes=4))
    with pytest.raises(CheckpointError, match=r"one int8 scale.*train\.py --quant"):
        load_strict(target, old)
    load_strict(target, params)


@pytest.mark.parametrize("compiled", [False, True], ids=["framework", "kernels"])
def test_fine_tuning_moves_a_concatenation_range_once_per_step_over_both_halves(compiled):
    """One moving-range step over the union of both halves: a step per half would settle
    between their ranges and clip the wider one; the layer reading the module must not
    observe its input again."""
    from src.quant.observers import ACTIVATION_EMA_DECAY
    from src.quant.primitives import activation_qparams

    ms.set_seed(11)
    net = prepare(GhostNet(width=0.5, num_classes=4))
    if compiled:
        use_compiled_kernels(net)
    block = net.blocks[0]  # ghost1's output goes straight to ghost2's primary convolution
    module, observer = block.ghost1, block.ghost1.cheap_operation.conv.input_quant
    assert block.ghost2.primary_conv.conv.input_quant is observer
    gamma = module.cheap_operation.conv.bn.gamma
    gamma.set_data(gamma * 3.0)  # the cheap half three times wider than the primary
    rng = np.random.default_rng(12)
    calibrate_network(net, Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
    block.set_train(True)
    x = Tensor(np.abs(rng.standard_normal((2, 8, 16, 16))).astype(np.float32))
    state = [(param, param.asnumpy().copy()) for param in block.get_parameters()]
    state += [(param, param.asnumpy().copy()) for param in (observer.act_min, observer.act_max)]
    low, high = observer.act_min.asnumpy()[0], observer.act_max.asnumpy()[0]
    primary = module.primary_conv(x)
    cheap = module.cheap_operation(fake_quant_activation(primary, *activation_qparams(observer.act_min,
                                                                                        observer.act_max)))
    primary, cheap = primary.asnumpy(), cheap.asnumpy()
    assert cheap.max() > 1.5 * primary.max()  # the union is not the average
    for param, value in state:
        param.set_data(Tensor(value))
    block(x)
    keep = np.float32(ACTIVATION_EMA_DECAY)
    np.testing.assert_allclose(observer.act_max.asnumpy()[0],
                               high * keep + max(primary.max(), cheap.max()) * np.float32(1 - ACTIVATION_EMA_DECAY),
                               rtol=1e-6)
    np.testing.assert_allclose(observer.act_min.asnumpy()[0],
                               low * keep + min(primary.min(), cheap.min()) * np.float32(1 - ACTIVATION_EMA_DECAY),
                               rtol=1e-6, atol=1e-7)
