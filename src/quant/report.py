"""Where int8 loses accuracy, layer by layer: a float GhostNet and its int8 form run on the same
batches, compared at every convolution and the classifier (what NNCF's accuracy control and
onnxruntime's ``qdq_loss_debug`` give their users).

Per layer, in decibels of signal-to-quantization-noise ratio (SQNR, 10 log10 of the float
values' power over the power of their difference from the int8 form; higher is better, each
6 dB about one bit):

* ``weight_sqnr``: the int8 weights (dequantized) against the float weights with their
  BatchNorm folded in;
* ``layer_sqnr``: the int8 layer alone, given the float network's input to that layer
  (quantized as the int8 layer quantizes it), against the float layer: the error this layer
  adds. The report sorts by it, worst first;
* ``network_sqnr``: the int8 network's output at this layer against the float network's:
  the error gathered from the input up to here;

and the input's uint8 range (``range_low`` .. ``range_high``, from the int8 scale and zero
point) against the float input seen there: ``range_used``, the share of the range that the
values span (a range much wider than the values wastes levels: few of the 256 carry them),
and ``clipped``, the share of values outside the range.

Both networks run in PyNative mode on the framework's operators, where each layer's input
and output can be watched (``register_forward_hook``); this module does no I/O.
"""
import math
from dataclasses import asdict, dataclass

import mindspore as ms
import numpy as np

from src.ghostnet import ConvBNAct, GhostNet
from src.quant.primitives import ACT_QMAX, ACT_QMIN, fake_quant_activation

CLASSIFIER = "classifier"


@dataclass
class LayerQuantization:
    """One layer's line of the report (see the module's docstring)."""
    name: str
    index: int  # position in the network, from the input
    weight_sqnr: float
    layer_sqnr: float
    network_sqnr: float
    range_low: float
    range_high: float
    seen_low: float
    seen_high: float
    range_used: float
    clipped: float

    def as_dict(self):
        return asdict(self)


def sqnr_db(signal_power, noise_power):
    """10 log10(signal / noise); inf where there is no noise, -inf where there is no signal."""
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


class _Layer:
    """The cells to watch for one layer in the float and the int8 network, and its sums."""

    def __init__(self, name, index, float_cell, int8_cell, int8_layer):
        self.name, self.index = name, index
        self.float_cell, self.int8_cell = float_cell, int8_cell
        self.int8_layer = int8_layer  # the Int8Conv2d / Int8Dense holding the quantization
        self.float_input = self.float_output = self.int8_output = None
        self.sums = dict(signal=0.0, layer_noise=0.0, network_noise=0.0, count=0, clipped=0)
        self.seen_low, self.seen_high = math.inf, -math.inf

    def input_range(self):
        scale = float(self.int8_layer.act_scale.asnumpy().reshape(-1)[0])
        zero_point = float(self.int8_layer.act_zero_point.asnumpy().reshape(-1)[0])
        return (ACT_QMIN - zero_point) * scale, (ACT_QMAX - zero_point) * scale

    def quantized_input(self, x):
        layer = self.int8_layer
        return fake_quant_activation(x, layer.input_scale(), layer.input_zero_point())

    def add_batch(self):
        """Fold this batch's watched tensors into the sums; the int8 layer runs once more, alone
        (its hook records that run too: the network's output is read first)."""
        expected = self.float_output.asnumpy().astype(np.float64)
        whole = self.int8_output.asnumpy().astype(np.float64)
        alone = self.int8_cell(self.quantized_input(self.float_input)).asnumpy().astype(np.float64)
        values = self.float_input.asnumpy()
        low, high = self.input_range()
        sums = self.sums
        sums["signal"] += float(np.square(expected).sum())
        sums["layer_noise"] += float(np.square(alone - expected).sum())
        sums["network_noise"] += float(np.square(whole - expected).sum())
        sums["count"] += values.size
        sums["clipped"] += int(((values < low) | (values > high)).sum())
        self.seen_low = min(self.seen_low, float(values.min()))
        self.seen_high = max(self.seen_high, float(values.max()))
        self.float_input = self.float_output = self.int8_output = None

    def result(self, weight_sqnr):
        low, high = self.input_range()
        span = max(0.0, min(high, self.seen_high) - max(low, self.seen_low))
        sums = self.sums
        return LayerQuantization(
            name=self.name, index=self.index, weight_sqnr=weight_sqnr,
            layer_sqnr=sqnr_db(sums["signal"], sums["layer_noise"]),
            network_sqnr=sqnr_db(sums["signal"], sums["network_noise"]),
            range_low=low, range_high=high, seen_low=self.seen_low, seen_high=self.seen_high,
            range_used=span / (high - low) if high > low else 0.0,
            clipped=sums["clipped"] / max(sums["count"], 1))


def _watched_cell(slot):
    """The cell whose output is the layer's: a ConvBNAct's (convolution, BatchNorm, ReLU), else
    the convolution's (BatchNorm folded in)."""
    return slot.owner if isinstance(slot.owner, ConvBNAct) else slot.conv


def _pair_layers(float_net, int8_net):
    float_slots = float_net.conv_bn_pairs()
    int8_slots = int8_net.conv_bn_pairs()
    if [s.name for s in float_slots] != [s.name for s in int8_slots]:
        raise ValueError("the float and int8 networks have different layers (another width?)")
    layers = [_Layer(f.name, i, _watched_cell(f), _watched_cell(q), q.conv)
              for i, (f, q) in enumerate(zip(float_slots, int8_slots))]
    layers.append(_Layer(CLASSIFIER, len(layers), float_net.classifier, int8_net.classifier,
                         int8_net.classifier))
    return layers


def _weight_sqnrs(float_net, int8_net):
    """Each layer's weight SQNR, the float network's BatchNorms folded (it must be so already)."""
    result = {}
    float_slots = {s.name: s for s in float_net.conv_bn_pairs()}
    for slot in int8_net.conv_bn_pairs():
        weight = float_slots[slot.name].conv.weight.asnumpy().astype(np.float64)
        quantized = slot.conv.dequantized_weight().asnumpy().astype(np.float64)
        result[slot.name] = sqnr_db(np.square(weight).sum(), np.square(quantized - weight).sum())
    weight = float_net.classifier.weight.asnumpy().astype(np.float64)
    quantized = int8_net.classifier.dequantized_weight().asnumpy().astype(np.float64)
    result[CLASSIFIER] = sqnr_db(np.square(weight).sum(), np.square(quantized - weight).sum())
    return result


def quantization_report(float_net, int8_net, batches):
    """:class:`LayerQuantization` of every layer, worst ``layer_sqnr`` first.

    ``float_net``: a float :class:`GhostNet` on the framework's operators (no fast CPU path);
    its BatchNorms are folded here, in place. ``int8_net``: the int8 network of the same width
    and classes (``build_int8_network`` with an int8 checkpoint loaded, or ``convert``'s).
    ``batches``: image batches (NCHW float32 arrays or tensors); a few are enough.
    """
    if not isinstance(float_net, GhostNet) or not isinstance(int8_net, GhostNet):
        raise TypeError("quantization_report takes a float GhostNet and its int8 form")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # hooks run in PyNative mode only
    handles = []
    try:
        float_net.fold_batchnorms()
        int8_net.set_train(False)
        layers = _pair_layers(float_net, int8_net)
        for layer in layers:
            handles.append(layer.float_cell.register_forward_hook(_recorder(layer, "float")))
            handles.append(layer.int8_cell.register_forward_hook(_recorder(layer, "int8")))
        seen = 0
        for images in batches:
            images = ms.Tensor(images) if not isinstance(images, ms.Tensor) else images
            float_net(images)
            int8_net(images)
            for layer in layers:
                layer.add_batch()
            seen += 1
        if not seen:
            raise ValueError("no batches to compare")
    finally:
        for handle in handles:
            handle.remove()
        ms.set_context(mode=mode)
    weights = _weight_sqnrs(float_net, int8_net)
    rows = [layer.result(weights[layer.name]) for layer in layers]
    return sorted(rows, key=lambda row: (row.layer_sqnr, row.index))


def _recorder(layer, which):
    def record(cell, inputs, output):
        if which == "float":
            layer.float_input, layer.float_output = inputs[0], output
        else:
            layer.int8_output = output
    return record


COLUMNS = (  # (title, the cell of a row)
    ("layer", lambda r: r.name),
    ("#", lambda r: str(r.index)),
    ("layer dB", lambda r: f"{r.layer_sqnr:.1f}"),
    ("network dB", lambda r: f"{r.network_sqnr:.1f}"),
    ("weight dB", lambda r: f"{r.weight_sqnr:.1f}"),
    ("input range", lambda r: f"[{r.range_low:.3g}, {r.range_high:.3g}]"),
    ("seen", lambda r: f"[{r.seen_low:.3g}, {r.seen_high:.3g}]"),
    ("used", lambda r: f"{r.range_used:.1%}"),
    ("clipped", lambda r: f"{r.clipped:.2%}"),
)


def format_table(rows, limit=None):
    """The report as an aligned text table (``limit``: the first rows only): the layer's name
    left-aligned, the figures right-aligned."""
    lines = [[title for title, _ in COLUMNS]] + [[cell(row) for _, cell in COLUMNS] for row in rows[:limit]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(" ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                              for i, (cell, width) in enumerate(zip(line, widths))) for line in lines)
