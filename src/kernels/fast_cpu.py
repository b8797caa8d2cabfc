"""A fast CPU path for GhostNet's slow convolutions: depthwise ones and the 3-channel stem.

MindSpore 2.10's CPU Conv2D hands oneDNN plain NCHW layouts; for depthwise and 3-input-channel
convolutions oneDNN then falls back to its reference kernel, tens of times slower than a
plain loop. Here:

* depthwise convolutions run ``src/kernels/depthwise_conv.cc`` (forward, input gradient,
  weight gradient) as MindSpore AOT custom operators. The source is compiled on first use
  by the machine's C++ compiler into a cache folder keyed by the source, the flags, the
  compiler and the CPU (``$XDG_CACHE_HOME/ghostnet_pets/kernels``, default ``~/.cache``),
  atomically, so concurrent processes are safe. Without a compiler the framework's
  convolution is used and one warning says so;
* the stem runs as unfold + matrix product, both fast framework ops with gradients.

:func:`enable_fast_cpu_path` switches a built network's convolutions over, in place, on CPU
only; parameters and their names stay as they are. Kernel threads: ``OMP_NUM_THREADS``
when set (as for MindSpore's oneDNN), else MindSpore's CPU op thread setting where it can
be read, else the process's usable cores (at most MindSpore's default of 25).
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

logger = logging.getLogger(__name__)

KERNEL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_conv.cc")
COMPILE_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-pthread")
FRAMEWORK_THREAD_CAP = 25  # MindSpore's default CPU op thread count, when not configured
_library = {}  # "path": built library or None once tried
_ops = {}


def cache_folder():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ghostnet_pets", "kernels")


def _compiler():
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cpu_flags():
    """This CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def _cpu_signature():
    """What -march=native depends on: the CPU's flags."""
    return " ".join(sorted(cpu_flags())) or platform.processor()


def _cache_key(compiler, source):
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest = hashlib.sha256()
    for part in (source, " ".join(COMPILE_FLAGS), compiler, "".join(version), platform.machine(), _cpu_signature()):
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_kernel_library():
    """Path of the compiled kernel library, compiling it if needed; None (one warning) if impossible."""
    if "path" in _library:
        return _library["path"]
    compiler = _compiler()
    path = None
    if compiler is None:
        logger.warning("no C++ compiler (c++, g++ or clang++) found: depthwise convolutions use "
                       "MindSpore's CPU convolution, several times slower. Install one (e.g. "
                       "`apt install g++`) for the fast CPU path.")
    else:
        with open(KERNEL_SOURCE, "rb") as f:
            source = f.read()
        target_folder = os.path.join(cache_folder(), _cache_key(compiler, source))
        path = os.path.join(target_folder, "depthwise_conv.so")
        if not os.path.isfile(path):
            path = _compile(compiler, target_folder, path)
    if path is not None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or _framework_threads()
        ctypes.CDLL(path).DepthwiseSetThreads(threads)
    _library["path"] = path
    return path


def _framework_threads():
    try:  # private API: read only to match MindSpore's own thread count
        from mindspore._c_expression import RuntimeConf
        conf = RuntimeConf.get_instance()
        if conf.is_op_threads_num_configured() and hasattr(conf, "get_op_threads_num"):
            return conf.get_op_threads_num()
    except (ImportError, AttributeError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(usable or 1, FRAMEWORK_THREAD_CAP)


def _compile(compiler, folder, path):
    os.makedirs(folder, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(handle)
    command = [compiler, *COMPILE_FLAGS, KERNEL_SOURCE, "-o", partial]
    logger.info("compiling the CPU depthwise kernels into %s", folder)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(partial)
        logger.warning("compiling %s failed (%s); depthwise convolutions use MindSpore's CPU "
                       "convolution. Compiler output:\n%s", KERNEL_SOURCE, " ".join(command),
                       result.stderr.strip()[-2000:])
        return None
    os.replace(partial, path)  # atomic: a concurrent build leaves one complete file
    return path


def conv_geometry(conv):
    """(stride, padding, groups) of an ``nn.Conv2d``, as ``ops.conv2d`` takes them."""
    stride = conv.stride[2:] if len(conv.stride) == 4 else conv.stride
    return stride, conv.padding, conv.group


def apply_conv(x, weight, geometry, fast_conv=None):
    """The convolution; ``fast_conv`` is its fast cell (:func:`fast_conv_for`), if any."""
    if fast_conv is not None:
        return fast_conv(x, weight)
    stride, padding, groups = geometry
    return ops.conv2d(x, weight, None, stride, "pad", padding, 1, groups)


def conv_out_size(size, kernel, stride, padding):
    """Output side of a convolution padded by ``padding`` on both sides."""
    return (size + 2 * padding - kernel) // stride + 1


def depthwise_conv_ops(stride):
    """``{variant: custom op}`` for ``stride``, with their backward; None without the library.

    Variants: ``plain`` (x, w), ``bias`` (x, w, b) and ``bias_relu`` (x, w, b), the last two
    for inference with BatchNorm folded.
    """
    library = build_kernel_library()
    if library is None:
        return None
    if stride in _ops:
        return _ops[stride]
    input_grad = ops.Custom(f"{library}:DepthwiseInputGrad", out_shape=lambda grad, w, x: x,
                            out_dtype=lambda grad, w, x: x, func_type="aot")
    weight_grad = ops.Custom(f"{library}:DepthwiseWeightGrad", out_shape=lambda x, grad, w: w,
                             out_dtype=lambda x, grad, w: w, func_type="aot")

    def out_shape(x, w, *bias):
        return [x[0], x[1], *(conv_out_size(x[i], w[i], stride, w[i] // 2) for i in (2, 3))]

    def bprop(x, weight, out, grad):
        return input_grad(grad, weight, x), weight_grad(x, grad, weight)

    def bprop_bias(x, weight, bias, out, grad):
        return input_grad(grad, weight, x), weight_grad(x, grad, weight), grad.sum(axis=(0, 2, 3))

    def bprop_bias_relu(x, weight, bias, out, grad):
        return bprop_bias(x, weight, bias, out, grad * (out > 0).astype(grad.dtype))

    _ops[stride] = {
        variant: ops.Custom(f"{library}:{function}", out_shape=out_shape, out_dtype=lambda x, *rest: x,
                            func_type="aot", bprop=backward)
        for variant, function, backward in (("plain", "DepthwiseForward", bprop),
                                            ("bias", "DepthwiseBiasForward", bprop_bias),
                                            ("bias_relu", "DepthwiseBiasReluForward", bprop_bias_relu))}
    return _ops[stride]


class DepthwiseConvCPU(nn.Cell):
    """Depthwise convolution (padding kernel // 2) through the compiled kernels; with a bias,
    optionally followed by a fused ReLU (see :func:`fuse_relu_for_inference`)."""

    def __init__(self, variants, relu=False):
        super().__init__()
        self.plain = variants["plain"]
        self.with_bias = variants["bias_relu" if relu else "bias"]
        self.variants = variants
        self.relu = relu  # whether the ReLU is fused: what fuse_relu_for_inference did, for a reader

    def construct(self, x, weight, bias=None):
        if bias is None:
            return self.plain(x, weight)
        return self.with_bias(x, weight, bias)


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
    """Switch ``net``'s depthwise and stem convolutions to the fast cells, in place, when the
    device is the CPU. Returns ``net``; elsewhere it is returned unchanged.

    Besides ``nn.Conv2d``, a cell with ``accepts_fast_conv = True`` (the quantized layers of
    src/quant/) takes one: it has ``weight``, ``geometry`` and a ``fast_conv`` it calls
    through :func:`apply_conv`.
    """
    if ms.get_context("device_target") != "CPU":
        return net
    switched = 0
    for _, cell in list(net.cells_and_names()):
        if type(cell) is nn.Conv2d:  # pylint: disable=unidiomatic-typecheck (subclasses stay)
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
    logger.debug("fast CPU path: %d convolutions switched", switched)
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
