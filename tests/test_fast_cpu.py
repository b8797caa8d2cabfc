"""The fast CPU path (src/kernels/fast_cpu.py): kernels against MindSpore's convolution, networks with
and without it, BatchNorm folding, the kernel cache and the fallback without a compiler."""
import json
import os
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import pytest

import src.kernels.library as library
import src.kernels.quant_cpu as quant_cpu
from conftest import REPO
from src.kernels.fast_cpu import (DepthwiseConvCPU, FastBatchNorm2d, FastConv2d, FastConvBNAct, FastGhostModule,
                                  UnfoldConv, FastSqueezeExcite, channel_scale_op, depthwise_conv_ops,
                                  enable_fast_cpu_path)
from src.ghostnet import ConvBNAct, GhostModule, GhostNet, SqueezeExcite
from src.deploy.fold import fold_batchnorm_for_inference
from src.models import network_for_kind
from src.quant import (ConcatQuant, QuantConv2d, RangeObserver, calibrate, observe_ranges, set_bn_frozen,
                       set_observers_frozen)
from src.quant.fake_quant import QuantConvBNAct, observe_and_quantize
from src.quant.primitives import activation_qparams, fake_quant_activation, fake_quant_weight, weight_scales

# (batch, channels, height, width, kernel, stride): GhostNet's kernels and strides, odd sizes, batch 1
DEPTHWISE_SHAPES = [(2, 8, 9, 7, 3, 1), (1, 4, 11, 6, 5, 2), (3, 5, 8, 8, 3, 2), (1, 3, 1, 1, 5, 1),
                    (2, 6, 7, 10, 5, 1), (1, 16, 14, 14, 3, 2), (2, 12, 5, 5, 5, 2),
                    (2, 3, 8, 8, 1, 2), (2, 3, 10, 9, 1, 2)]  # 1x1, stride 2: the last row and column unread


def randn(*shape, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.fixture(scope="module")
def kernels():
    if library.build_kernel_library() is None:
        pytest.fail("the CPU kernels did not build: is a C++ compiler installed?")


def framework_depthwise(x, weight, stride):
    kernel = weight.shape[-1]
    return ops.conv2d(x, weight, None, stride, "pad", kernel // 2, 1, weight.shape[0])


def gradients(fn, x, weight, direction, *extra):
    return ms.grad(lambda *args: (fn(*args) * direction).sum(), grad_position=tuple(range(2 + len(extra))))(
        x, weight, *extra)


@pytest.mark.parametrize("n, c, h, w, k, s", DEPTHWISE_SHAPES)
def test_depthwise_kernels_equal_the_framework_convolution(kernels, n, c, h, w, k, s):
    x, weight = randn(n, c, h, w, seed=1), randn(c, 1, k, k, seed=2)
    op = depthwise_conv_ops(s)["plain"]
    expected = framework_depthwise(x, weight, s)
    out = op(x, weight)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.asnumpy(), expected.asnumpy(), atol=1e-5)
    direction = randn(*expected.shape, seed=3)
    ours = gradients(op, x, weight, direction)
    theirs = gradients(lambda a, b: framework_depthwise(a, b, s), x, weight, direction)
    for got, want in zip(ours, theirs):  # input gradient, weight gradient
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
def test_the_bias_and_relu_variants_equal_convolution_plus_bias(kernels, relu):
    x, weight, bias = randn(2, 6, 9, 9, seed=4), randn(6, 1, 3, 3, seed=5), randn(6, seed=6)

    def reference(a, b, c):
        out = framework_depthwise(a, b, 2) + c.reshape(1, -1, 1, 1)
        return ops.relu(out) if relu else out
    op = depthwise_conv_ops(2)["bias_relu" if relu else "bias"]
    np.testing.assert_allclose(op(x, weight, bias).asnumpy(), reference(x, weight, bias).asnumpy(), atol=1e-5)
    direction = randn(2, 6, 5, 5, seed=7)
    for got, want in zip(gradients(op, x, weight, direction, bias), gradients(reference, x, weight, direction, bias)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-4, rtol=1e-5)


def test_the_unfold_stem_equals_the_framework_convolution():
    x, weight = randn(2, 3, 33, 31, seed=8), randn(16, 3, 3, 3, seed=9)
    expected = ops.conv2d(x, weight, None, 2, "pad", 1, 1, 1)
    np.testing.assert_allclose(UnfoldConv(3, 2, 1)(x, weight).asnumpy(), expected.asnumpy(), atol=1e-5)
    direction = randn(*expected.shape, seed=10)
    ours = gradients(UnfoldConv(3, 2, 1), x, weight, direction)
    theirs = gradients(lambda a, b: ops.conv2d(a, b, None, 2, "pad", 1, 1, 1), x, weight, direction)
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-4, rtol=1e-5)


def twin_networks(kind="float"):
    """The same weights with and without the fast path: ``(fast, framework)``."""
    ms.set_seed(5)
    framework = network_for_kind(kind, 0.5, 4, fast_cpu=False)
    fast = network_for_kind(kind, 0.5, 4, fast_cpu=True)
    for (name, theirs), (_, ours) in zip(framework.parameters_and_names(), fast.parameters_and_names()):
        ours.set_data(theirs.value().copy())
    return fast, framework


def test_the_fast_path_switches_every_depthwise_convolution_and_the_stem(kernels):
    fast, framework = twin_networks()
    depthwise = [c for _, c in fast.cells_and_names() if isinstance(c, FastConv2d)
                 and isinstance(c.fast_conv, DepthwiseConvCPU)]
    stems = [c for _, c in fast.cells_and_names() if isinstance(c, FastConv2d) and isinstance(c.fast_conv, UnfoldConv)]
    expected = [c for _, c in framework.cells_and_names() if isinstance(c, nn.Conv2d) and c.group > 1]
    assert len(depthwise) == len(expected) == 32 + 5 + 4  # ghost cheap ops, shortcuts, stride-2 stages
    assert len(stems) == 1
    batch_norms = [c for _, c in framework.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    assert len(batch_norms) == 80 and all(isinstance(c, FastBatchNorm2d) for _, c in fast.cells_and_names()
                                          if isinstance(c, nn.BatchNorm2d))
    excites = [c for _, c in framework.cells_and_names() if isinstance(c, SqueezeExcite)]
    assert len(excites) == 7 and all(isinstance(c, FastSqueezeExcite) for _, c in fast.cells_and_names()
                                     if isinstance(c, SqueezeExcite))
    fused = [c for _, c in fast.cells_and_names() if isinstance(c, FastConvBNAct) and c.relu is not None]
    assert len(fused) == 2 * 16 + 1  # the first ghost module of each bottleneck (primary, cheap), the last 1x1
    ghosts = [c for _, c in fast.cells_and_names() if isinstance(c, GhostModule)]
    assert len(ghosts) == 32 and all(isinstance(c, FastGhostModule) for c in ghosts)
    one_operator = [c for _, c in fast.cells_and_names() if isinstance(c, FastConvBNAct) and c.depthwise_bn_ops]
    assert len(one_operator) == len(depthwise)  # in training: convolution, BatchNorm (and ReLU) in one operator
    assert [n for n, _ in fast.parameters_and_names()] == [n for n, _ in framework.parameters_and_names()]


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 4, 1, 1), (2, 3, 8, 8)])
def test_the_channel_scale_kernel_and_its_gradients_equal_the_framework_product(kernels, shape):
    x, gate = randn(*shape, seed=41), randn(shape[0], shape[1], 1, 1, seed=42)
    direction = randn(*shape, seed=43)
    results = []
    for product in (channel_scale_op(), lambda a, b: a * b):
        def loss(a, b, product=product):
            return (product(a, b) * direction).sum()
        grads = ms.grad(loss, grad_position=(0, 1))(x, gate)
        results.append([product(x, gate).asnumpy()] + [g.asnumpy() for g in grads])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _BatchNormThenReLU(nn.Cell):
    """``bn`` alone, or followed by a ReLU: fused where ``bn`` is the fast one."""

    def __init__(self, bn, relu):
        super().__init__()
        self.bn = bn
        self.relu = relu

    def construct(self, x):
        if not self.relu:
            return self.bn(x)
        if isinstance(self.bn, FastBatchNorm2d):
            return self.bn.with_relu(x)
        return ops.relu(self.bn(x))


@pytest.mark.parametrize("relu", [False, True], ids=["batchnorm", "batchnorm-relu"])
@pytest.mark.parametrize("shape, mean", [((4, 6, 5, 7), 3.0), ((16, 3, 9, 9), 40.0), ((2, 5, 1, 1), 0.0)])
def test_the_batchnorm_training_kernels_equal_the_framework_batchnorm(kernels, shape, mean, relu):
    """Output, gradients and moving statistics, on planes that are not a multiple of the
    kernel's eight lanes and on a mean far from 0 (where x - mean cancels)."""
    rng = np.random.default_rng(31)
    channels = shape[1]
    x = ms.Tensor(rng.normal(mean, 2.0, shape).astype(np.float32))
    direction = ms.Tensor(rng.normal(0.0, 1.0, shape).astype(np.float32))
    gamma, beta = rng.normal(1.0, 0.3, channels), rng.normal(0.0, 0.3, channels)
    results = []
    for fast in (True, False):
        bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)
        bn.gamma.set_data(ms.Tensor(gamma.astype(np.float32)))
        bn.beta.set_data(ms.Tensor(beta.astype(np.float32)))
        if fast:
            enable_fast_cpu_path(bn)
        assert isinstance(bn, FastBatchNorm2d) == fast
        net = _BatchNormThenReLU(bn, relu)
        net.set_train(True)

        def loss(v, net=net):
            return (net(v) * direction).sum()
        grads = ms.grad(loss, grad_position=0, weights=net.trainable_params())(x)
        out = net(x).asnumpy()
        results.append([out, grads[0].asnumpy(), *(g.asnumpy() for g in grads[1]),
                        bn.moving_mean.asnumpy(), bn.moving_variance.asnumpy()])  # each updated twice
    if relu:
        assert 0 < (results[1][0] == 0).mean() < 1  # the ReLU cuts some values, not all
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


def _training_results(make_cell, path, x, direction):
    """Training output, gradients (input, then parameters), moving statistics after two steps
    and eval output of ``make_cell()``: on the fast path (``fused``), on the fast path
    with each depthwise convolution and BatchNorm as separate kernels (``separate``), or on
    the framework's operators."""
    ms.set_seed(3)
    cell = make_cell()
    if path != "framework":
        enable_fast_cpu_path(cell)
    if path == "fused":  # count the fused operator's calls (PyNative runs the cells' Python)
        calls = []
        for _, inner in cell.cells_and_names():
            if isinstance(inner, FastConvBNAct) and inner.depthwise_bn_ops is not None:
                inner.depthwise_batchnorm = (lambda run: lambda *args: calls.append(1) or run(*args))(
                    inner.depthwise_batchnorm)
    if path == "separate":
        if isinstance(cell, FastGhostModule):
            cell.__class__ = GhostModule
        for _, inner in cell.cells_and_names():
            if isinstance(inner, FastConvBNAct):
                inner.depthwise_bn_ops = None
    cell.set_train(True)
    out = cell(x).asnumpy()
    grads = ms.grad(lambda v: (cell(v) * direction).sum(), grad_position=0, weights=cell.trainable_params())(x)
    statistics = [p.asnumpy() for n, p in cell.parameters_and_names() if "moving_" in n]  # two steps taken
    if path == "fused":
        assert len(calls) >= 2, "the fused operator did not run"
    cell.set_train(False)  # the eval path, on those moving statistics
    return [out, grads[0].asnumpy(), *(g.asnumpy() for g in grads[1]), *statistics, cell(x).asnumpy()]


def _assert_fused_equals_separate_and_framework(make_cell, x, direction):
    fused, separate, framework = (_training_results(make_cell, path, x, direction)
                                  for path in ("fused", "separate", "framework"))
    for got, want in zip(fused, separate):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(fused, framework):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    return fused


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", [(3, 6, 7, 9), (2, 4, 1, 1), (2, 3, 12, 10)])  # batch innermost up to 64 values a plane
def test_the_fused_ghost_cheap_branch_equals_the_separate_kernels_bit_for_bit(kernels, relu, shape):
    """The cheap branch and concatenation in one operator (src/kernels/depthwise_batchnorm.cc):
    output, gradients of the input and of every parameter, and the moving statistics, against
    the same module on the separate kernels (equal bit for bit) and on the framework's operators."""
    x = randn(*shape, seed=51) * 3.0 + 1.0  # mean off 0: the ReLU cuts some values, not all
    direction = randn(shape[0], 10, *shape[2:], seed=52)
    fused = _assert_fused_equals_separate_and_framework(lambda: GhostModule(shape[1], 10, relu=relu), x, direction)
    assert len(fused) == 2 + 6 + 4 + 1  # output, input, (conv, gamma, beta) x 2, moving statistics x 2, eval
    if relu:
        assert 0 < (fused[0][:, 5:] == 0).mean() < 1


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape, kernel, stride", [((3, 6, 9, 7), 5, 2), ((2, 4, 8, 8), 3, 2), ((2, 5, 6, 5), 3, 1),
                                                  ((2, 3, 11, 10), 5, 2), ((17, 2, 4, 4), 3, 1)])
def test_the_fused_depthwise_batchnorm_equals_the_separate_kernels_bit_for_bit(kernels, relu, shape, kernel, stride):
    """A depthwise convolution, its BatchNorm and ReLU in one operator: as the test above, for
    the stride-2 stages' and shortcuts' layers, odd sizes, and planes over 64 values (each
    image's plane on its own) and up to it (the batch innermost; 17 images: a block of 16 and 1)."""
    x = randn(*shape, seed=53) * 3.0 + 1.0
    out_size = [(side + 2 * (kernel // 2) - kernel) // stride + 1 for side in shape[2:]]
    direction = randn(shape[0], shape[1], *out_size, seed=54)

    def make_cell():
        return ConvBNAct(shape[1], shape[1], kernel, stride, groups=shape[1], relu=relu)
    fused = _assert_fused_equals_separate_and_framework(make_cell, x, direction)
    assert fused[0].shape == direction.shape
    if relu:
        assert 0 < (fused[0] == 0).mean() < 1


def test_network_outputs_and_gradients_equal_with_and_without_the_fast_path(kernels):
    fast, framework = twin_networks()
    x, direction = randn(2, 3, 40, 40, seed=11), randn(2, 4, seed=12)
    results = []
    for net in (fast, framework):
        net.set_train(True)  # batch statistics, dropout off below
        net.dropout.p = 0.0
        params = net.trainable_params()
        grads = ms.grad(lambda images: (net(images) * direction).sum(), grad_position=0, weights=params)(x)
        net.set_train(False)
        results.append((net(x).asnumpy(), grads[0].asnumpy(), [g.asnumpy() for g in grads[1]]))
    (out_a, input_a, weights_a), (out_b, input_b, weights_b) = results
    np.testing.assert_allclose(out_a, out_b, atol=1e-5)
    np.testing.assert_allclose(input_a, input_b, atol=1e-5, rtol=1e-4)
    for got, want in zip(weights_a, weights_b):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["fake-quant", "int8"])
def test_the_int8_forms_use_the_fast_cells_and_compute_the_same(kernels, kind):
    fast, framework = twin_networks(kind)
    assert sum(1 for _, c in fast.cells_and_names() if isinstance(c, DepthwiseConvCPU)) >= 41
    x = randn(2, 3, 32, 32, seed=13)
    if kind == "fake-quant":
        class Batches:
            def create_tuple_iterator(self, num_epochs=1):
                return iter([(x, None)])
        for net in (fast, framework):
            calibrate(net, Batches(), 1)
    else:
        for net in (fast, framework):  # random int8 weights and unit activation scales
            for name, param in net.parameters_and_names():
                if name.endswith(".weight"):
                    param.set_data(ms.Tensor(np.random.default_rng(len(name)).integers(
                        -20, 20, param.shape).astype(np.int8)))
                elif name.endswith("weight_scale"):
                    param.set_data(ms.Tensor(np.full(param.shape, 0.01, np.float32)))
                elif name.endswith("act_scale"):
                    param.set_data(ms.Tensor(np.full(param.shape, 0.05, np.float32)))
    fast.set_train(False)
    framework.set_train(False)
    np.testing.assert_allclose(fast(x).asnumpy(), framework(x).asnumpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_folding_batchnorm_keeps_the_outputs(kernels, fast):
    ms.set_seed(6)
    net = network_for_kind("float", 0.5, 4, fast_cpu=fast)
    rng = np.random.default_rng(7)
    for name, param in net.parameters_and_names():  # statistics that are not the identity
        if name.endswith(("moving_variance", "gamma")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
        elif name.endswith(("moving_mean", "beta")):
            param.set_data(ms.Tensor(rng.normal(0, 0.1, param.shape).astype(np.float32)))
    net.set_train(False)
    x = randn(2, 3, 32, 32, seed=14)
    before = net(x).asnumpy()
    fold_batchnorm_for_inference(net)
    assert not [name for name, _ in net.parameters_and_names() if "moving_" in name or name.endswith("gamma")]
    if fast:  # the ReLU after a depthwise convolution went into the kernel
        assert any(isinstance(c, DepthwiseConvCPU) and c.relu for _, c in net.cells_and_names())
    np.testing.assert_allclose(net(x).asnumpy(), before, atol=1e-5 * max(1.0, np.abs(before).max()))


def test_without_a_compiler_the_framework_convolution_is_used_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(library, "_library", {})
    monkeypatch.setattr(quant_cpu, "_kernels", {})
    monkeypatch.setattr(library, "_compiler", lambda: None)
    with caplog.at_level("WARNING"):
        nets = [enable_fast_cpu_path(GhostNet(width=0.5, num_classes=4)) for _ in range(2)]
    assert caplog.text.count("no C++ compiler") == 1
    depthwise = [c for _, c in nets[0].cells_and_names() if isinstance(c, nn.Conv2d) and c.group > 1]
    assert depthwise and all(type(c) is nn.Conv2d for c in depthwise)  # noqa: E721
    nets[0].set_train(False)
    assert np.isfinite(nets[0](randn(1, 3, 32, 32)).asnumpy()).all()


def test_the_kernel_cache_is_keyed_by_source_and_flags(monkeypatch):
    compiler = library._compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    key = library._cache_key(compiler, b"source")
    assert library._cache_key(compiler, b"source") == key
    assert library._cache_key(compiler, b"other source") != key
    monkeypatch.setattr(library, "COMPILE_FLAGS", library.COMPILE_FLAGS + ("-DEXTRA",))
    assert library._cache_key(compiler, b"source") != key


def test_a_failing_compile_warns_with_the_command_and_leaves_no_files(monkeypatch, tmp_path, caplog):
    if library._compiler() is None:
        pytest.skip("no C++ compiler")
    broken = tmp_path / "broken.cc"
    broken.write_text("int f( {\n")
    monkeypatch.setattr(library, "KERNEL_SOURCES", library.KERNEL_SOURCES + (str(broken),))
    monkeypatch.setattr(library, "_library", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        assert library.build_kernel_library() is None
    assert "compiling the CPU kernels failed" in caplog.text and "broken.cc" in caplog.text
    assert [f for _, _, files in os.walk(tmp_path / "cache") for f in files] == []  # no objects, no partial library


def test_processes_building_at_once_share_one_cached_library(tmp_path):
    if library._compiler() is None:
        pytest.skip("no C++ compiler")
    script = ("import src.kernels.library as f, sys; path = f.build_kernel_library(); "
              "assert path and path.startswith(sys.argv[1]), path; print(path)")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO), GLOG_v="3")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for _ in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    folder = os.path.dirname(paths.pop())
    assert os.listdir(folder) == [library.LIBRARY_NAME]  # no partial files left behind


def test_the_fake_quant_kernels_equal_the_framework_arithmetic_bit_for_bit(kernels):
    fq = quant_cpu.fake_quant_kernels()
    scale, zero_point = ms.Tensor(np.float32(0.037)), ms.Tensor(np.float32(61.0))
    rng = np.random.default_rng(21)
    steps = np.arange(-70, 200) + 0.5  # every value on a rounding tie, and beyond both ends
    values = np.concatenate([steps * 0.037, rng.normal(0, 3, 70000)]).astype(np.float32)
    x = ms.Tensor(values.reshape(2, -1))
    np.testing.assert_array_equal(fq.activation(x, scale, zero_point).asnumpy(),
                                  fake_quant_activation(x, scale, zero_point).asnumpy())
    direction = ms.Tensor(rng.normal(0, 1, values.shape).astype(np.float32).reshape(2, -1))
    grads = [ms.grad(lambda v, k=k: (fake_quant_activation(v, scale, zero_point, k) * direction).sum())(x)
             for k in (fq, None)]
    np.testing.assert_array_equal(grads[0].asnumpy(), grads[1].asnumpy())

    weight = rng.normal(0, 0.2, (6, 3, 3, 3)).astype(np.float32)
    weight[2] = 0.0  # an all-zero channel: the tiny scale
    weight[4, 0, 0, 0] = 5.0  # one large value: the others round to few steps
    ours, our_scales = fq.weight(ms.Tensor(weight))
    theirs_scales = weight_scales(ms.Tensor(weight))
    np.testing.assert_array_equal(our_scales.asnumpy(), theirs_scales.asnumpy())
    np.testing.assert_array_equal(ours.asnumpy(), fake_quant_weight(ms.Tensor(weight), theirs_scales).asnumpy())
    grad = ms.grad(lambda v: (fq.weight(v)[0] * 3.0).sum())(ms.Tensor(weight))
    np.testing.assert_array_equal(grad.asnumpy(), np.full(weight.shape, 3.0, np.float32))

    values[-3], values[5] = 1e6, -1e6  # the extremes in the first and the last chunk
    np.testing.assert_array_equal(fq.min_max(ms.Tensor(values)).asnumpy(), [-1e6, 1e6])


def test_calibrating_on_the_kernels_widens_ranges_as_the_framework_does(kernels):
    """An observer while calibrating (eval mode) widens its range, from 0, to every value seen:
    on the range_widen kernel as in framework operators. On the kernel a NaN stays in the range
    (which a checkpoint then refuses) instead of leaving with the next batch."""
    batches = [randn(2, 3, 4, 5, seed=1) * 2.0, randn(3, 7, seed=2) + 3.0, randn(2, 2, seed=3) - 10.0]
    ranges = []
    for fast_quant in (quant_cpu.fake_quant_kernels(), None):
        observer = RangeObserver()
        observer.fast_quant = fast_quant
        observer.calibrating = True
        observer.set_train(False)
        ranges.append([])
        for x in batches:
            np.testing.assert_array_equal(observer(x).asnumpy(), x.asnumpy())
            ranges[-1].append([observer.act_min.asnumpy()[0], observer.act_max.asnumpy()[0]])
    seen = [np.concatenate([b.asnumpy().ravel() for b in batches[:i + 1]] + [[0.0]]) for i in range(len(batches))]
    np.testing.assert_array_equal(ranges[0], [[v.min(), v.max()] for v in seen])
    np.testing.assert_array_equal(ranges[0], ranges[1])

    observer = RangeObserver()
    observer.fast_quant = quant_cpu.fake_quant_kernels()
    observer.calibrating = True
    observer.set_train(False)
    with_nan = batches[0].asnumpy().copy()
    with_nan[1, 2, 3, 4] = np.nan
    for x in (ms.Tensor(with_nan), batches[1]):
        observer(x)
        assert np.isnan(observer.act_min.asnumpy()).all() and np.isnan(observer.act_max.asnumpy()).all()


@pytest.mark.parametrize("shape", [(6, 1, 3, 3), (5, 4, 1, 1), (3, 2, 5, 5)])
def test_the_frozen_batchnorm_fold_kernel_equals_the_separate_kernels_bit_for_bit(kernels, shape):
    """A QAT layer's parameters with BatchNorm frozen in one operator (fold_batchnorm: the weight
    folded with the moving statistics and quantized, the folded bias quantized) against the
    weight fold kernel, the framework's folded bias and the bias kernel: values and the
    gradients of the weight, gamma and beta, equal bit for bit."""
    fq = quant_cpu.fake_quant_kernels()
    rng = np.random.default_rng(11)
    channels = shape[0]
    weight = ms.Tensor(rng.normal(0, 0.4, shape).astype(np.float32))
    gamma, beta, mean = (ms.Tensor(rng.normal(loc, 0.5, channels).astype(np.float32)) for loc in (1.0, 0.0, 0.5))
    variance = ms.Tensor(rng.uniform(0.2, 3.0, channels).astype(np.float32))
    eps, act_scale = ms.Tensor(np.full(1, 1e-5, np.float32)), ms.Tensor(np.full(1, 0.0213, np.float32))
    weight_direction = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    bias_direction = ms.Tensor(rng.standard_normal(channels).astype(np.float32))

    def fused(w, g, b):
        out = fq.fold_batchnorm(w, g, b, mean, variance, eps, act_scale)
        return out[0], out[1]

    def separate(w, g, b):
        folded = fq.fold_weight(w, g, variance, eps)
        return folded[0], fq.bias(b - g * mean / folded[2], act_scale, folded[1])

    results = []
    for parameters in (fused, separate):
        values = [v.asnumpy() for v in parameters(weight, gamma, beta)]
        def loss(w, g, b, f=parameters):
            folded_weight, folded_bias = f(w, g, b)
            return (folded_weight * weight_direction).sum() + (folded_bias * bias_direction).sum()
        grads = ms.grad(loss, grad_position=(0, 1, 2))(weight, gamma, beta)
        results.append(values + [g.asnumpy() for g in grads])
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
    assert all(np.abs(g).max() > 0 for g in results[0][2:])


def observer_with_range(low, high, frozen=False):
    observer = RangeObserver()
    observer.act_min.set_data(ms.Tensor(np.array([low], np.float32)))
    observer.act_max.set_data(ms.Tensor(np.array([high], np.float32)))
    observer.frozen = frozen
    observer.set_train(True)
    return observer


@pytest.mark.parametrize("frozen", [False, True])
def test_the_training_input_quantization_kernels_equal_the_framework_bit_for_bit(kernels, frozen):
    """An observed input (the range's step, then the quantization) and a ghost module's
    concatenation (the second half quantized, then the range's step over both float halves) each
    run as one kernel that steps the range in place: outputs, gradients and the ranges after them
    as the framework's operators give them."""
    fq = quant_cpu.fake_quant_kernels()
    rng = np.random.default_rng(23)
    x = ms.Tensor(rng.normal(0.5, 2.0, (2, 3, 5, 4)).astype(np.float32))
    direction = ms.Tensor(rng.standard_normal((2, 3, 5, 4)).astype(np.float32))
    results = []
    for kernel in (fq, None):
        observer = observer_with_range(-1.0, 2.0, frozen)
        out, scale = observe_and_quantize(x, observer, kernel)
        step_range = [observer.act_min.asnumpy(), observer.act_max.asnumpy()]
        observer = observer_with_range(-1.0, 2.0, frozen)
        grad = ms.grad(lambda v: (observe_and_quantize(v, observer, kernel)[0] * direction).sum())(x)
        results.append([out.asnumpy(), scale.asnumpy().reshape(()), grad.asnumpy()] + step_range)
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
    assert (results[0][-1] == 2.0) == frozen and (results[0][2] == 0).any()  # the range moved; some values clip

    primary_values = rng.normal(0.0, 3.0, (2, 3, 5, 4)).astype(np.float32)
    primary_values[0, 0, 0, :2] = 10.0, -10.0  # the step widens the range [-2, 3] by about 0.08 each side
    cheap_values = rng.normal(1.0, 1.5, (2, 4, 5, 4)).astype(np.float32)
    between = (1, 2, 3, slice(0, 2))  # outside the range as it stands, inside it after the step
    cheap_values[between] = 3.03, -2.04
    primary, cheap = ms.Tensor(primary_values), ms.Tensor(cheap_values)
    concat_direction = ms.Tensor(rng.standard_normal((2, 7, 5, 4)).astype(np.float32))
    results = []
    for kernel in (fq, None):
        def module(first, second, q):
            return q.concat(first, q(first), second)

        def concat_quant_from_the_start():
            concat_quant = ConcatQuant(observer_with_range(-2.0, 3.0, frozen))
            concat_quant.fast_quant = kernel
            concat_quant.set_train(True)
            return concat_quant

        stepped = concat_quant_from_the_start()
        out = module(primary, cheap, stepped).asnumpy()
        step_range = [stepped.observer.act_min.asnumpy(), stepped.observer.act_max.asnumpy()]
        fresh = concat_quant_from_the_start()  # the gradient's forward takes the same step
        grads = ms.grad(lambda a, b: (module(a, b, fresh) * concat_direction).sum(), grad_position=(0, 1))(primary,
                                                                                                          cheap)
        results.append([out, grads[0].asnumpy(), grads[1].asnumpy()] + step_range)
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
    assert (results[0][-1] == 3.0) == frozen and (results[0][2] == 0).any()
    # the cheap half's gradient clips with the range its forward used, not the range after the step
    assert (results[0][2][between] == 0).all() and (results[0][-1] > 3.03) != frozen
    assert (results[0][-2] < -2.04) != frozen


def test_eval_graphs_leave_the_ranges_alone_and_calibration_compiles_its_own(kernels):
    fast, _ = twin_networks("fake-quant")
    observers = [c for _, c in fast.cells_and_names() if isinstance(c, RangeObserver)]
    assert all(o.fast_quant is not None for o in observers)
    fast.set_train(False)
    x = randn(2, 3, 32, 32, seed=15)
    fast(x)  # an eval graph compiled before any calibration
    assert all(float(o.act_max.asnumpy()[0]) == 0.0 for o in observers)
    observe_ranges(fast, [x])
    ranges = [(o.act_min.asnumpy().copy(), o.act_max.asnumpy().copy()) for o in observers]
    assert all(high[0] > low[0] for low, high in ranges)
    calibrated = fast(x).asnumpy()  # the earlier eval graph reads the ranges set since
    fast(x * 10.0)
    assert all((o.act_min.asnumpy() == low).all() and (o.act_max.asnumpy() == high).all()
               for o, (low, high) in zip(observers, ranges))
    observe_ranges(fast, [x * 10.0])
    assert max(float(o.act_max.asnumpy()[0]) for o in observers) > max(float(h[0]) for _, h in ranges)
    assert not np.array_equal(fast(x).asnumpy(), calibrated)


def test_calibrating_in_pynative_mode_sets_the_ranges_graph_mode_does(kernels):
    """calibrate() runs few batches in PyNative mode (nothing to compile), more in graph mode:
    the same ranges bit for bit, and the context's mode as it was."""
    batches = [randn(2, 3, 32, 32, seed=seed) for seed in (15, 16)]
    ranges = []
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for eager in (True, False):
            net, _ = twin_networks("fake-quant")
            observe_ranges(net, batches, eager=eager)
            assert ms.get_context("mode") == ms.GRAPH_MODE
            ranges.append([p.asnumpy() for name, p in net.parameters_and_names()
                           if name.endswith(("act_min", "act_max"))])
    finally:
        ms.set_context(mode=mode)
    for eager, compiled in zip(*ranges):
        np.testing.assert_array_equal(eager, compiled)
    assert len(ranges[0]) > 100 and sum(float(r[0]) != 0.0 for r in ranges[0]) > 100


@pytest.mark.parametrize("bn_frozen, observers_frozen, whole_path",
                         [(False, False, False), (True, False, False), (True, True, False), (False, False, True),
                          (False, True, True), (True, False, True), (True, True, True)],
                         ids=["batch-statistics", "bn-frozen", "bn-and-ranges-frozen", "batch-statistics-whole-path",
                              "ranges-frozen-whole-path", "bn-frozen-whole-path", "bn-and-ranges-frozen-whole-path"])
def test_fake_quant_training_gradients_and_ranges_equal_with_and_without_the_kernels(kernels, bn_frozen,
                                                                                     observers_frozen, whole_path):
    if whole_path:  # the fast path's convolutions too, and the ReLUs in the kernels before them
        fast, framework = twin_networks("fake-quant")
        with_relu = [c for _, c in framework.cells_and_names() if isinstance(c, ConvBNAct) and c.relu is not None]
        fused = [c for _, c in fast.cells_and_names() if isinstance(c, QuantConvBNAct) and c.relu_inside]
        assert len(fused) == len(with_relu) > 20
    else:
        _, framework = twin_networks("fake-quant")
        _, fast = twin_networks("fake-quant")  # framework convolutions: only the fake-quant arithmetic differs
        for _, cell in fast.cells_and_names():
            if getattr(cell, "accepts_fast_quant", False):
                cell.fast_quant = quant_cpu.fake_quant_kernels()
    for net in (framework, fast):
        set_bn_frozen(net, bn_frozen)
        set_observers_frozen(net, observers_frozen)
    x, direction = randn(2, 3, 32, 32, seed=16), randn(2, 4, seed=17)
    # a batch other than the calibration's, where the ranges move (where they are frozen it would
    # clip, and rounding differences in the convolutions near the bounds flip its gradient)
    step_input = x * 1.5 if whole_path and not observers_frozen else x
    results = []
    for net in (fast, framework):
        observe_ranges(net, [x])
        calibrated = [p.asnumpy().copy() for name, p in net.parameters_and_names() if name.endswith("act_max")]
        net.set_train(True)
        net.dropout.p = 0.0
        params = net.trainable_params()
        grads = ms.grad(lambda images: (net(images) * direction).sum(), grad_position=0, weights=params)(step_input)
        ranges = [p.asnumpy() for name, p in net.parameters_and_names() if name.endswith(("act_min", "act_max"))]
        results.append((grads[0].asnumpy(), [g.asnumpy() for g in grads[1]], ranges))
        stepped = [p.asnumpy() for name, p in net.parameters_and_names() if name.endswith("act_max")]
        moved = sum(1 for before, after in zip(calibrated, stepped) if before[0] != after[0])
        assert moved == 0 if observers_frozen else (moved > 40 or not whole_path)
    (input_a, weights_a, ranges_a), (input_b, weights_b, ranges_b) = results
    # the kernels sum batch statistics in double, the framework in float: rounding-level
    # differences, which the random network amplifies in its larger gradients (and leaves as
    # noise in gradients that cancel to about 0)
    for got, want in zip([input_a] + weights_a + ranges_a, [input_b] + weights_b + ranges_b):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * max(np.abs(want).max(), 0.05))


GRAPH_MODE_QAT_STEPS = """
import json, sys
import mindspore as ms, mindspore.nn as nn, numpy as np
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from src.models import network_for_kind
from src.quant import QuantConv2d, observe_ranges, set_bn_frozen

class Loss(nn.Cell):  # a linear loss: its gradient does not vanish
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.direction = ms.Tensor(np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32))

    def construct(self, x):
        return (self.net(x) * self.direction).sum()

ms.set_seed(5)
framework = network_for_kind("fake-quant", 0.5, 4, fast_cpu=False)
fast = network_for_kind("fake-quant", 0.5, 4, fast_cpu=True)
separate = network_for_kind("fake-quant", 0.5, 4, fast_cpu=True)  # depthwise layers on their separate kernels
for _, cell in separate.cells_and_names():
    if isinstance(cell, QuantConv2d):
        cell.fuses_depthwise_batchnorm = False
for net in (fast, separate):
    for (_, theirs), (_, ours) in zip(framework.parameters_and_names(), net.parameters_and_names()):
        ours.set_data(theirs.value().copy())
x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
states, moved, input_grads, stepped, statistics_kept = [], [], [], [], []
for net in (fast, framework, separate):
    observe_ranges(net, [x])
    calibrated = {n: p.asnumpy().copy() for n, p in net.parameters_and_names() if n.endswith("act_max")}
    net.set_train(True)
    net.dropout.p = 0.0
    step = Loss(net)
    step.set_train(True)
    input_grads.append(ms.grad(step)(x).asnumpy())  # BatchNorm on batch statistics, forward and backward
    stepped.append({n: p.asnumpy().copy() for n, p in net.parameters_and_names()
                    if n.endswith(("moving_mean", "moving_variance", "act_min", "act_max"))})
    if net is separate:  # the depthwise fusion is in the batch-statistics step only
        break
    set_bn_frozen(net, True)
    frozen_step = Loss(net)  # another graph
    frozen_step.set_train(True)
    input_grads.append(ms.grad(frozen_step)(x * 1.5).asnumpy())
    states.append({n: p.asnumpy() for n, p in net.parameters_and_names()
                   if n.endswith(("moving_mean", "moving_variance", "act_min", "act_max"))})
    moved.append(sum(1 for n, v in calibrated.items() if states[-1][n][0] != v[0]))
    statistics_kept.append(all(np.array_equal(states[-1][n], v) for n, v in stepped[-1].items() if "moving" in n))
ours, theirs = states
worst = max(float(np.abs(ours[n] - theirs[n]).max() / (np.abs(theirs[n]).max() + 1e-6)) for n in theirs)
# (on batch statistics far from the calibration's, the classifier's input clips: its gradient is 0)
grads = [(a, b) for a, b in zip(input_grads[:2], input_grads[2:4]) if np.abs(b).max() > 0]
worst_grad = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in grads)
# the fused depthwise operator against its separate kernels: the same in graph mode, bit for bit (a
# range read a step early or late would show here, not within the tolerances above)
fused_exact = (all(np.array_equal(stepped[0][n], stepped[2][n]) for n in stepped[0])
               and np.array_equal(input_grads[0], input_grads[4]))
print(json.dumps([worst, worst_grad, len(grads), moved, fused_exact, statistics_kept,
                  sum(1 for n in theirs if n.endswith("act_max")),
                  sum(1 for n in theirs if "output_range" in n and n.endswith("act_max"))]))
"""


def test_in_graph_mode_the_qat_kernels_update_statistics_and_ranges_as_the_framework_does(kernels, tmp_path):
    """The QAT kernels write the moving statistics and the ranges in place: in GRAPH_MODE
    (train.py's; the tests run PyNative) a training step with BatchNorm on batch statistics and
    one with BatchNorm frozen (each forward and backward) must leave them as the framework's
    operators do, and give the same input gradients; the depthwise layers fused or on their
    separate kernels, the same bit for bit; the frozen step, the moving statistics as they were."""
    script = tmp_path / "qat_steps.py"  # MindSpore compiles graphs from source files only
    script.write_text(GRAPH_MODE_QAT_STEPS)
    env = dict(os.environ, PYTHONPATH=str(REPO), GLOG_v="3")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    worst, worst_grad, compared, moved, fused_exact, statistics_kept, ranges, output_ranges = json.loads(
        result.stdout.strip().splitlines()[-1])
    assert worst < 1e-4 and worst_grad < 1e-3 and compared >= 1
    assert fused_exact and statistics_kept == [True, True]
    # every range moved: the outputs', the observed inputs' and the ghost modules' concatenations'
    assert moved == [ranges, ranges] and ranges > output_ranges > 40


@pytest.mark.parametrize("batchnorm", [True, False])
def test_the_eval_parameter_kernel_equals_the_framework_arithmetic_bit_for_bit(kernels, batchnorm):
    rng = np.random.default_rng(22)
    bn = nn.BatchNorm2d(8) if batchnorm else None
    layer = QuantConv2d(nn.Conv2d(4, 8, 3, has_bias=not batchnorm, pad_mode="pad", padding=1), bn)
    for _, param in layer.parameters_and_names():
        if param.name.endswith(("act_min", "act_max")):
            continue
        values = rng.normal(0, 0.5, param.shape)
        if param.name.endswith("moving_variance"):
            values = np.abs(values) + 0.01
        param.set_data(ms.Tensor(values.astype(np.float32)))
    layer.input_quant.act_min.set_data(ms.Tensor(np.array([-0.7], np.float32)))
    layer.input_quant.act_max.set_data(ms.Tensor(np.array([2.3], np.float32)))
    layer.set_train(False)
    framework = [t.asnumpy() for t in layer.eval_params()]
    layer.fast_quant = quant_cpu.fake_quant_kernels()
    fast = [t.asnumpy() for t in layer.eval_params()]
    for got, want in zip(fast, framework):
        np.testing.assert_array_equal(got.reshape(want.shape), want)


class WithRelu(nn.Cell):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x):
        return self.layer.with_relu(x)


@pytest.mark.parametrize("relu", [False, True])
def test_the_qat_batchnorm_kernels_equal_the_framework_layer(kernels, relu):
    """A QAT convolution with BatchNorm on batch statistics (and the ReLU after it): the compiled
    forward and backward against the framework's operators. Its convolution's output has mean
    about 40 and std about 2, where unshifted sums would cancel."""
    results = []
    for fast in (True, False):
        rng = np.random.default_rng(31)
        conv = nn.Conv2d(4, 6, 1, weight_init=ms.Tensor(rng.normal(1.0, 0.1, (6, 4, 1, 1)).astype(np.float32)))
        bn = nn.BatchNorm2d(6, momentum=0.9)
        for param, values in ((bn.gamma, rng.uniform(0.5, 1.5, 6)), (bn.beta, rng.normal(0, 0.5, 6)),
                              (bn.moving_mean, rng.normal(40, 1, 6)), (bn.moving_variance, rng.uniform(2, 6, 6))):
            param.set_data(ms.Tensor(values.astype(np.float32)))
        layer = QuantConv2d(conv, bn)
        if fast:
            layer.fast_quant = quant_cpu.fake_quant_kernels()
        x = ms.Tensor(rng.normal(10.0, 0.5, (3, 4, 7, 6)).astype(np.float32))
        observe_ranges(layer, [x])
        layer.set_train(True)
        step = WithRelu(layer) if relu else layer
        out = step(x).asnumpy()
        state = [p.asnumpy().copy() for p in (bn.moving_mean, bn.moving_variance, layer.output_range.act_min,
                                               layer.output_range.act_max)]
        direction = ms.Tensor(rng.standard_normal(out.shape).astype(np.float32))
        params = [conv.weight, bn.gamma, bn.beta]
        grads = ms.grad(lambda v: (step(v) * direction).sum(), grad_position=0, weights=params)(x)
        results.append([out] + state + [grads[0].asnumpy()] + [g.asnumpy() for g in grads[1]])
    assert (results[0][0] == 0).any() == relu and (results[0][0] < 0).any() != relu
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("relu", [False, True], ids=["batchnorm", "batchnorm-relu"])
@pytest.mark.parametrize("shape, kernel, stride, on_grid", [
    ((2, 4, 9, 9), 3, 1, True),     # a ghost module's cheap operation: its input arrives quantized;
                                    # planes over 64 values: each on its own, the backward in place
    ((2, 4, 11, 10), 5, 2, False),  # a stride-2 stage's or shortcut's layer: its input observed
    ((17, 3, 4, 4), 3, 1, False),   # planes up to 64 values: the batch innermost
    ((3, 6, 9, 7), 3, 1, True),
    ((2, 5, 8, 7), 3, 2, True)])
def test_the_fused_qat_depthwise_layer_equals_its_separate_kernels_bit_for_bit(kernels, relu, shape, kernel, stride,
                                                                              on_grid):
    """A depthwise QAT layer with BatchNorm on batch statistics in one operator (weight fold,
    convolution, BatchNorm, src/kernels/qat_depthwise.cc) against the same layer on the separate
    kernels: output, the moving statistics and ranges after the step, and the gradients of the
    input, the weight, gamma and beta, equal bit for bit."""
    channels = shape[1]
    results = []
    for fused in (True, False):
        rng = np.random.default_rng(37)
        conv = nn.Conv2d(channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels,
                         weight_init=ms.Tensor(rng.normal(0.0, 0.5, (channels, 1, kernel, kernel)).astype(np.float32)))
        bn = nn.BatchNorm2d(channels, momentum=0.9)
        for param, values in ((bn.gamma, rng.uniform(0.5, 1.5, channels)), (bn.beta, rng.normal(0, 0.5, channels)),
                              (bn.moving_mean, rng.normal(1, 1, channels)),
                              (bn.moving_variance, rng.uniform(2, 6, channels))):
            param.set_data(ms.Tensor(values.astype(np.float32)))
        layer = QuantConv2d(conv, bn)
        enable_fast_cpu_path(layer)
        layer.fuses_depthwise_batchnorm = fused
        x = ms.Tensor(rng.normal(0.5, 2.0, shape).astype(np.float32))
        observe_ranges(layer, [x])
        if on_grid:  # as a ghost module's concatenation hands it over: quantized in this layer's range
            layer.read_quantized_by(layer)
            x = fake_quant_activation(x, *activation_qparams(layer.input_quant.act_min, layer.input_quant.act_max))
        layer.set_train(True)
        calls = []
        run_fused = layer._train_depthwise_with_batch_statistics  # PyNative runs the cell's Python
        layer._train_depthwise_with_batch_statistics = lambda *args: calls.append(1) or run_fused(*args)
        step = WithRelu(layer) if relu else layer
        out = step(x).asnumpy()
        state = [p.asnumpy().copy() for p in (bn.moving_mean, bn.moving_variance, layer.output_range.act_min,
                                               layer.output_range.act_max, layer.input_quant.act_min,
                                               layer.input_quant.act_max)]
        direction = ms.Tensor(rng.standard_normal(out.shape).astype(np.float32))
        grads = ms.grad(lambda v: (step(v) * direction).sum(), grad_position=0,
                        weights=[conv.weight, bn.gamma, bn.beta])(x)
        assert len(calls) == (2 if fused else 0)
        results.append([out] + state + [grads[0].asnumpy()] + [g.asnumpy() for g in grads[1]])
    fused, separate = results
    for got, want in zip(fused, separate):
        np.testing.assert_array_equal(got, want)
    assert (fused[0] == 0).any() == relu and (fused[0] < 0).any() != relu
    assert np.abs(fused[-3]).max() > 0 and np.abs(fused[7]).max() > 0  # gradients reach the weight and the input
