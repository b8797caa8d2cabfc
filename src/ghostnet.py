"""GhostNet v1 (Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020).

The architecture equals timm's ``ghostnet_050/100/130`` (the paper authors' reference code);
parameter names equal the original MindSpore model-zoo GhostNet, so its float checkpoints
load unchanged. Model code only: no I/O, no argparse, no context setting.
"""
import math
import re
import statistics
from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor
from mindspore.common.initializer import HeNormal, Normal

# Table 1 of the paper, one row per GhostBottleneck, grouped by the paper's stages:
# (kernel, expansion channels, output channels, squeeze-excite ratio, stride)
BLOCK_TABLE = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    ((3, 200, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1),
     (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280
DROPOUT = 0.2
DROPOUT_OP_SEED = 1  # the mask's stream: the global seed and this one
BN_MOMENTUM = 0.9  # MindSpore convention: 1 - PyTorch's 0.1
BN_EPS = 1e-5
WIDTHS = {"ghostnet_050": 0.5, "ghostnet_100": 1.0, "ghostnet_130": 1.3}
WIDTH_CHOICES = tuple(sorted(WIDTHS.values()))


def moving_share_kept(bn):
    """The share of its moving statistics a BatchNorm keeps per training step: what
    ``nn.BatchNorm2d`` was given as ``momentum``, as it stores 1 - that, the batch's share."""
    return 1.0 - bn.momentum


def make_divisible(value, divisor=4):
    """Round ``value`` to a multiple of ``divisor``, never more than 10% down (timm's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv2d(in_channels, out_channels, kernel_size, stride=1, groups=1, has_bias=False):
    """Convolution with symmetric k//2 padding ('same' pads stride-2 convs asymmetrically)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=kernel_size // 2, group=groups, has_bias=has_bias,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def global_mean(x):
    """Mean over H and W, keeping them as 1 x 1.

    A matrix product with a ones vector: MindSpore's CPU ReduceMean over (H, W) is several
    times slower, and ONNX export lacks AdaptiveAvgPool2D.
    """
    n, c, h, w = x.shape
    ones = ops.ones((h * w, 1), x.dtype) / (h * w)
    return ops.matmul(x.reshape(n * c, h * w), ones).reshape(n, c, 1, 1)


class HardSigmoid(nn.Cell):
    """relu6(x + 3) / 6, written out because ONNX export has no HSigmoid."""

    def construct(self, x):
        return ops.relu6(x + 3.0) / 6.0


class Dropout(nn.Cell):
    """``nn.Dropout(p)``, with the mask drawn by ``ops.StandardNormal``: an element is kept where
    the draw is below the normal quantile of 1 - p. MindSpore's CPU Dropout kernel draws
    another mask from the same seed on every run (three runs of 300 calls gave three
    different results), so two trainings with one seed parted within an epoch."""

    def __init__(self, p):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.keep_below = statistics.NormalDist().inv_cdf(1 - p) if p > 0 else 0.0
        seed = ms.get_seed()  # mindspore.set_seed's, as nn.Dropout; without one, a random stream
        self.normal = ops.StandardNormal(seed=seed or 0, seed2=DROPOUT_OP_SEED if seed else 0)

    def construct(self, x):
        if not self.training or self.p == 0:
            return x
        keep = (self.normal(x.shape) < self.keep_below).astype(x.dtype)
        return x * (keep * (1.0 / (1.0 - self.p)))


def dropout_mask(p, batch_size, seed):
    """A training step's dropout mask for the classifier's inputs, (batch_size, HEAD_CHANNELS):
    each element kept with probability 1 - p (then 1 / (1 - p)) or dropped (0), drawn by numpy
    from ``seed`` alone (e.g. the run's seed, the worker and the step). A step's mask is then
    the same however the run got there, also resumed in another process, where a random op's
    stream would start again."""
    shape = (batch_size, HEAD_CHANNELS)
    if p == 0:
        return np.ones(shape, np.float32)
    kept = np.random.default_rng(seed).random(shape) >= p
    return (kept / (1.0 - p)).astype(np.float32)


class ConvBNAct(nn.Cell):
    """Convolution, BatchNorm and an optional ReLU; children are named ``conv`` and ``bn``.

    ``bn`` becomes None once the BatchNorm is folded into the convolution (for inference, or
    by quantization), and ``relu`` None once a kernel computes it (see :class:`ConvSlot`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, relu=True):
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU() if relu else None

    def construct(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


def depthwise(channels, kernel_size, stride=1, relu=True):
    return ConvBNAct(channels, channels, kernel_size, stride, groups=channels, relu=relu)


class GhostModule(nn.Cell):
    """Half the output from a 1x1 convolution, the other half from a cheap 3x3 depthwise one."""

    def __init__(self, in_channels, out_channels, relu=True, ratio=2, cheap_kernel=3):
        super().__init__()
        self.out_channels = out_channels
        primary_channels = math.ceil(out_channels / ratio)
        cheap_channels = primary_channels * (ratio - 1)
        self.primary_conv = ConvBNAct(in_channels, primary_channels, 1, relu=relu)
        self.cheap_operation = depthwise(primary_channels, cheap_kernel, relu=relu)
        self.trim = primary_channels + cheap_channels != out_channels
        self.concat_quant = None  # the int8 forms put the concatenation's one quantization here

    def construct(self, x):
        primary = self.primary_conv(x)
        if self.concat_quant is None:
            out = ops.cat((primary, self.cheap_operation(primary)), axis=1)
        else:  # int8: both halves on one scale, so concatenating is a copy
            quantized = self.concat_quant(primary)
            out = self.concat_quant.concat(primary, quantized, self.cheap_operation(quantized))
        if self.trim:
            out = out[:, :self.out_channels]
        return out


class SqueezeExcite(nn.Cell):
    """Channel attention with a hard-sigmoid gate; reduced channels divisible by 4."""

    def __init__(self, channels, ratio):
        super().__init__()
        reduced = make_divisible(channels * ratio, 4)
        self.conv_reduce = conv2d(channels, reduced, 1, has_bias=True)
        self.relu = nn.ReLU()
        self.conv_expand = conv2d(reduced, channels, 1, has_bias=True)
        self.gate = HardSigmoid()

    def construct(self, x):
        return x * self.gate_of(x)

    def gate_of(self, x):
        """The (N, C, 1, 1) gate ``x`` is multiplied by."""
        scale = global_mean(x)
        return self.gate(self.conv_expand(self.relu(self.conv_reduce(scale))))


class GhostBottleneck(nn.Cell):
    """ghost1 (expand, ReLU) -> [stride-2 depthwise] -> [SE] -> ghost2 (project) + shortcut."""

    def __init__(self, in_channels, mid_channels, out_channels, kernel_size, stride, se_ratio):
        super().__init__()
        self.ghost1 = GhostModule(in_channels, mid_channels, relu=True)
        self.dw = depthwise(mid_channels, kernel_size, stride, relu=False) if stride > 1 else None
        self.se = SqueezeExcite(mid_channels, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_channels, out_channels, relu=False)
        if in_channels == out_channels and stride == 1:
            self.shortcut = None
        else:
            self.shortcut = nn.SequentialCell(
                depthwise(in_channels, kernel_size, stride, relu=False),
                ConvBNAct(in_channels, out_channels, 1, relu=False),
            )

    def ghost1_reader(self):
        """The :class:`ConvBNAct` that reads ghost1's output directly (the stride-2 depthwise
        or ghost2's primary), or None where squeeze-excite reads it."""
        if self.dw is not None:
            return self.dw
        return self.ghost2.primary_conv if self.se is None else None

    def construct(self, x):
        residual = x
        x = self.ghost1(x)
        if self.dw is not None:
            x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        if self.shortcut is not None:
            residual = self.shortcut(residual)
        return x + residual


class GhostNet(nn.Cell):
    """GhostNet v1. ``forward_features`` gives the map before pooling; ``forward_head`` the logits."""

    def __init__(self, width=1.0, num_classes=1000, dropout=DROPOUT, block_table=BLOCK_TABLE):
        super().__init__()
        self.width = width
        self.num_classes = num_classes
        stem_channels = make_divisible(STEM_CHANNELS * width, 4)
        self.conv_stem = conv2d(3, stem_channels, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(stem_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU()

        blocks = []
        in_channels = stem_channels
        for stage in block_table:
            for kernel, expansion, out, se_ratio, stride in stage:
                out_channels = make_divisible(out * width, 4)
                mid_channels = make_divisible(expansion * width, 4)
                blocks.append(GhostBottleneck(in_channels, mid_channels, out_channels,
                                              kernel, stride, se_ratio))
                in_channels = out_channels
        self.num_features = make_divisible(block_table[-1][-1][1] * width, 4)
        blocks.append(ConvBNAct(in_channels, self.num_features, 1))
        self.blocks = nn.SequentialCell(blocks)

        self.conv_head = conv2d(self.num_features, HEAD_CHANNELS, 1, has_bias=True)
        self.dropout = Dropout(dropout)
        self.classifier = self._new_classifier(num_classes)

    @staticmethod
    def _new_classifier(num_classes):
        return nn.Dense(HEAD_CHANNELS, num_classes, weight_init=Normal(0.01), bias_init="zeros")

    def reset_classifier(self, num_classes):
        """Replace the classifier with a freshly initialised one for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.classifier = self._new_classifier(num_classes)
        self.classifier.update_parameters_name("classifier.")

    def conv_bn_pairs(self):
        """Every convolution with the BatchNorm and ReLU that follow it, as :class:`ConvSlot`s.

        The one description of the network's convolution layout: quantization swaps the
        convolutions through it, inference folds the BatchNorms, the fast CPU path fuses the
        ReLUs, and the ONNX writer reads the folded weights. Cells already swapped (quantized,
        folded) are listed the same way.
        """
        slots = [ConvSlot("conv_stem", self, "conv_stem", "bn1")]  # its ReLU is shared with the head
        for path, cell in self.cells_and_names():
            if isinstance(cell, ConvBNAct):
                slots.append(ConvSlot(f"{path}.conv", cell, "conv", "bn", "relu"))
            elif isinstance(cell, SqueezeExcite):
                slots.append(ConvSlot(f"{path}.conv_reduce", cell, "conv_reduce"))
                slots.append(ConvSlot(f"{path}.conv_expand", cell, "conv_expand"))
        slots.append(ConvSlot("conv_head", self, "conv_head"))
        return slots

    def ghost_modules(self):
        """Every ghost module as a :class:`GhostModuleSlot`, with the convolution that reads its
        output directly (ghost1 of a block without squeeze-excite) or None (the residual sum,
        squeeze-excite). The int8 forms give such a reader the concatenation's quantization."""
        slot_of = {id(slot.owner): slot for slot in self.conv_bn_pairs() if isinstance(slot.owner, ConvBNAct)}
        found = []
        for path, block in self.cells_and_names():
            if isinstance(block, GhostBottleneck):
                reader = block.ghost1_reader()
                found.append(GhostModuleSlot(f"{path}.ghost1", block.ghost1,
                                             slot_of[id(reader)] if reader is not None else None))
                found.append(GhostModuleSlot(f"{path}.ghost2", block.ghost2))
        return found

    def fold_batchnorms(self):
        """Fold every BatchNorm into its convolution, in place (eval mode only); returns self."""
        for slot in self.conv_bn_pairs():
            slot.fold_bn()
        self.set_train(False)
        return self

    def forward_features(self, x):
        x = self.conv_stem(x)
        if self.bn1 is not None:  # None once folded into conv_stem (see conv_bn_pairs)
            x = self.bn1(x)
        return self.blocks(self.relu(x))

    def forward_head(self, x, dropout_mask=None):
        """The logits of the feature map ``x``. In training the classifier's inputs go through
        dropout: ``self.dropout``'s, or where given, ``dropout_mask`` (:func:`dropout_mask`)."""
        x = global_mean(x)
        x = self.relu(self.conv_head(x))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(x) if dropout_mask is None else x * dropout_mask
        return self.classifier(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


def fold_batchnorm(weight, bias, bn):
    """``(weight, bias)`` (numpy) of a convolution followed by ``bn`` (eval mode) as one convolution."""
    std = np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps)
    factor = bn.gamma.asnumpy() / std
    folded_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    base = np.zeros(weight.shape[0]) if bias is None else bias
    folded_bias = bn.beta.asnumpy() + (base - bn.moving_mean.asnumpy()) * factor
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)


@dataclass
class ConvSlot:
    """One convolution of a GhostNet: the attributes of ``owner`` that hold it, the BatchNorm
    after it and a ReLU that belongs to it alone (``None`` where there is none)."""
    name: str  # the convolution's path in the network, e.g. "blocks.0.ghost1.primary_conv.conv"
    owner: nn.Cell
    conv_attr: str
    bn_attr: str = None
    relu_attr: str = None

    @property
    def conv(self):
        return getattr(self.owner, self.conv_attr)

    @property
    def bn(self):
        return getattr(self.owner, self.bn_attr) if self.bn_attr else None

    @property
    def relu(self):
        return getattr(self.owner, self.relu_attr) if self.relu_attr else None

    def replace(self, conv):
        """Put ``conv`` in the convolution's place; it computes the BatchNorm too, so that goes."""
        setattr(self.owner, self.conv_attr, conv)
        if self.bn_attr:
            setattr(self.owner, self.bn_attr, None)

    def drop_relu(self):
        """The convolution now applies the ReLU itself."""
        setattr(self.owner, self.relu_attr, None)

    def folded_weights(self):
        """``(weight, bias)`` as numpy float32, the BatchNorm (if any) folded in; a float
        ``nn.Conv2d`` only. The network is left as it is."""
        conv = self.conv
        weight = conv.weight.asnumpy().astype(np.float32)
        bias = conv.bias.asnumpy().astype(np.float32) if conv.has_bias else None
        if self.bn is not None:
            return fold_batchnorm(weight, bias, self.bn)
        return weight, bias if bias is not None else np.zeros(weight.shape[0], np.float32)

    def fold_bn(self):
        """Fold the BatchNorm into the convolution, in place (the convolution gains a bias)."""
        if self.bn is None:
            return
        weight, bias = self.folded_weights()
        conv = self.conv
        conv.weight.set_data(Tensor(weight))
        if conv.has_bias:
            conv.bias.set_data(Tensor(bias))
        else:
            conv.bias = Parameter(Tensor(bias), name=conv.weight.name.rsplit(".", 1)[0] + ".bias",
                                  requires_grad=False)
            conv.has_bias = True
        setattr(self.owner, self.bn_attr, None)


@dataclass
class GhostModuleSlot:
    """One ghost module of a GhostNet and the :class:`ConvSlot` of the one convolution that
    reads its output directly (None where other operations read it)."""
    name: str
    module: GhostModule
    reader: Optional[ConvSlot] = None


# --- timm's state dict (the paper authors' reference) -> our parameter names ----------------
_TIMM_BN_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                   "running_var": "moving_variance"}
_TIMM_SUBMODULES = (  # timm name fragment -> ours, after the block index is flattened
    (r"\.primary_conv\.0\.", ".primary_conv.conv."),
    (r"\.primary_conv\.1\.", ".primary_conv.bn."),
    (r"\.cheap_operation\.0\.", ".cheap_operation.conv."),
    (r"\.cheap_operation\.1\.", ".cheap_operation.bn."),
    (r"\.conv_dw\.", ".dw.conv."),
    (r"\.bn_dw\.", ".dw.bn."),
    (r"\.shortcut\.0\.", ".shortcut.0.conv."),
    (r"\.shortcut\.1\.", ".shortcut.0.bn."),
    (r"\.shortcut\.2\.", ".shortcut.1.conv."),
    (r"\.shortcut\.3\.", ".shortcut.1.bn."),
    (r"\.bn1\.", ".bn."),  # the last 1x1 ConvBnAct
)
_TIMM_BN_PARENTS = re.compile(r"(^bn1|\.bn|\.bn1)\.(weight|bias|running_mean|running_var)$")
_STAGE_OFFSETS = np.cumsum([0] + [len(stage) for stage in BLOCK_TABLE]).tolist()


def timm_to_zoo_name(name):
    """Map one timm GhostNet state-dict key to our (the original zoo's) parameter name; None
    for a block index beyond the table."""
    match = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", name)
    if match:
        stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        if stage >= len(_STAGE_OFFSETS):
            return None
        name = f"blocks.{_STAGE_OFFSETS[stage] + index}.{rest}"
        for pattern, replacement in _TIMM_SUBMODULES:
            name = re.sub(pattern, replacement, name)
    bn = _TIMM_BN_PARENTS.search(name)
    if bn:
        name = name[:bn.start(2)] + _TIMM_BN_FIELDS[bn.group(2)]
    return name


def create_model(name="ghostnet_100", num_classes=37, **kwargs):
    """Build a GhostNet variant by name: ``ghostnet_050``, ``ghostnet_100`` or ``ghostnet_130``."""
    if name not in WIDTHS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(WIDTHS))}")
    return GhostNet(width=WIDTHS[name], num_classes=num_classes, **kwargs)
