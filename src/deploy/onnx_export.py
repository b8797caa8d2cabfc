"""GhostNet as an ONNX model written from the network's own weights.

* a float network becomes a float model with every BatchNorm folded into its convolution;
* an int8 network (what an int8 checkpoint holds) becomes a QDQ model: int8 weight
  initializers with per-channel scales, int32 biases, and QuantizeLinear/DequantizeLinear
  pairs with uint8 scales and zero points from the checkpoint (no re-calibration).

onnxruntime runs a convolution on int8 kernels (QLinearConv) only when its output is
quantized too, so :func:`_insert_quantization` quantizes every activation tensor once, right
after its producer, with the parameters :func:`_tensor_qparams` picks: a ghost module's
halves and concatenation take the one quantization the int8 network gives them (so the
concatenation is a copy); a tensor a quantized layer reads takes that layer's own input
quantization; otherwise a convolution's output takes the range calibration observed
(``Int8Conv2d.output_min`` / ``output_max``), a hard sigmoid [0, 1]. A ReLU before a zero
point of 0 is dropped: uint8 clamps at 0 exactly as the ReLU does. The walk mirrors
``GhostNet.construct`` cell by cell; each convolution's weights, its BatchNorm folded in,
come from ``GhostNet.conv_bn_pairs()``. Model code stays free of ONNX.
"""
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor

from src.checkpoint import CheckpointKind
from src.deploy import weight_storage
from src.ghostnet import ConvBNAct, GhostBottleneck, GhostNet
from src.kernels import conv_geometry
from src.models import load_network
from src.quant import ACT_QMAX, ACT_QMIN, Int8Conv2d, Int8Dense, activation_qparams, convert

logger = logging.getLogger(__name__)

OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear; onnxruntime's QDQ fusions cover it
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass
class LayerWeights:
    """One convolution or classifier as the ONNX graph needs it.

    Float: ``weight`` and ``bias`` float32, the BatchNorm already folded. Int8: ``weight``
    int8 and ``bias`` int32, with the per-channel ``weight_scale`` and the input's uint8
    ``act_scale`` / ``act_zero_point``.
    """
    weight: np.ndarray
    bias: np.ndarray
    weight_scale: np.ndarray = None
    act_scale: float = None
    act_zero_point: int = None
    output_range: tuple = None

    @property
    def quantized(self):
        return self.weight_scale is not None

    def input_qparams(self):
        return QParams(self.act_scale, self.act_zero_point)


def _array(param):
    return param.asnumpy() if hasattr(param, "asnumpy") else np.asarray(param)


def layer_weights(layer, slot=None):
    """:class:`LayerWeights` of an int8 layer, an ``nn.Dense``, or the convolution of ``slot``
    (a ``ConvSlot``: its BatchNorm, if any, folded in)."""
    if isinstance(layer, (Int8Conv2d, Int8Dense)):
        output_range = None
        if isinstance(layer, Int8Conv2d):
            output_range = (float(_array(layer.output_min).reshape(())), float(_array(layer.output_max).reshape(())))
            if output_range[0] == output_range[1]:  # never observed: no requantization after it
                output_range = None
        return LayerWeights(_array(layer.weight).astype(np.int8), _array(layer.bias).astype(np.int32),
                            _array(layer.weight_scale).astype(np.float32),
                            float(_array(layer.act_scale).reshape(())),
                            int(_array(layer.act_zero_point).reshape(())), output_range)
    if slot is not None:
        return LayerWeights(*slot.folded_weights())
    return LayerWeights(_array(layer.weight).astype(np.float32), _array(layer.bias).astype(np.float32))


def _conv_attributes(layer, weight_shape):
    stride, padding, groups = layer.geometry if isinstance(layer, Int8Conv2d) else conv_geometry(layer)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if isinstance(padding, int):
        pads = [padding] * 4
    else:  # MindSpore (top, bottom, left, right); ONNX (top, left, bottom, right)
        top, bottom, left, right = padding
        pads = [top, left, bottom, right]
    return {"kernel_shape": list(weight_shape[2:]), "strides": list(stride), "pads": pads,
            "group": int(groups)}


class GraphBuilder:
    """Nodes and initializers with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self._used = defaultdict(int)

    def unique(self, prefix):
        self._used[prefix] += 1
        count = self._used[prefix]
        return prefix if count == 1 else f"{prefix}_{count}"

    def const(self, prefix, array):
        name = self.unique(prefix)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, prefix, **attributes):
        output = self.unique(prefix)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output


class GhostNetOnnxWriter:
    """Walks a float or int8 GhostNet and writes its ONNX graph.

    Quantized layers are written with dequantized weights and float inputs; what each
    layer's input needs (``layer_inputs``) and what each convolution's output ranged over
    (``output_ranges``) is recorded for :func:`_insert_quantization`.
    """

    def __init__(self, net, storage="int8"):
        self.weight_storage = storage
        self.graph = GraphBuilder()
        self.layer_inputs = []   # (layer node, QParams of its input)
        self.output_ranges = {}  # conv output tensor -> (min, max)
        self.classifier_output = None  # the logits before Flatten: never requantized
        self.quantized = {}      # tensor -> QParams: where the int8 network itself quantizes
        self.slots = {id(slot.conv): slot for slot in net.conv_bn_pairs()}

    # --- layers ---------------------------------------------------------------------------
    def weights(self, prefix, params):
        """Names of the (weight, bias) inputs: constants, or int8/int32 constants dequantized."""
        g = self.graph
        if not params.quantized:
            return g.const(f"{prefix}.weight", params.weight), g.const(f"{prefix}.bias", params.bias)
        weight_scale = g.const(f"{prefix}.weight_scale", params.weight_scale)
        stored, zero = weight_storage.encode(params.weight, self.weight_storage)
        weight_zero = g.const(f"{prefix}.weight_zero_point", np.full(len(params.weight_scale), zero, stored.dtype))
        weight = g.op("DequantizeLinear", [g.const(f"{prefix}.weight_quantized", stored), weight_scale,
                                           weight_zero], f"{prefix}.weight", axis=0)
        bias_scale = g.const(f"{prefix}.bias_scale", (params.act_scale * params.weight_scale).astype(np.float32))
        bias_zero = g.const(f"{prefix}.bias_zero_point", np.zeros(len(params.weight_scale), np.int32))
        bias = g.op("DequantizeLinear", [g.const(f"{prefix}.bias_int32", params.bias), bias_scale,
                                         bias_zero], f"{prefix}.bias", axis=0)
        return weight, bias

    def layer(self, op_type, prefix, cell, x, params=None, **attributes):
        if params is None:
            params = layer_weights(cell, self.slots.get(id(cell)))
        weight, bias = self.weights(prefix, params)
        out = self.graph.op(op_type, [x, weight, bias], prefix, **attributes)
        if params.quantized:
            self.layer_inputs.append((self.graph.nodes[-1], params.input_qparams()))
            if params.output_range is not None:
                self.output_ranges[out] = params.output_range
        return out

    def conv(self, prefix, conv, x):
        return self.layer("Conv", prefix, conv, x, **_conv_attributes(conv, _array(conv.weight).shape))

    def dense_as_conv(self, prefix, dense, x):
        """A linear layer on (N, C, 1, 1) as a 1x1 convolution: OpenVINO's int8 convolution
        kernels run it about 8x faster than its int8 fully connected one (bench/profile_openvino.py)."""
        params = layer_weights(dense)
        params.weight = params.weight.reshape(params.weight.shape + (1, 1))
        self.classifier_output = self.layer("Conv", prefix, dense, x, params, kernel_shape=[1, 1])
        return self.classifier_output

    # --- cells, in the order of their construct() -----------------------------------------
    def conv_bn_act(self, prefix, cell, x):
        x = self.conv(f"{prefix}.conv", cell.conv, x)
        return self.graph.op("Relu", [x], f"{prefix}.relu") if cell.relu is not None else x

    def ghost_module(self, prefix, module, x):
        primary = self.conv_bn_act(f"{prefix}.primary_conv", module.primary_conv, x)
        cheap = self.conv_bn_act(f"{prefix}.cheap_operation", module.cheap_operation, primary)
        out = self.graph.op("Concat", [primary, cheap], f"{prefix}.concat", axis=1)
        if module.concat_quant is not None:  # int8: halves and whole on the cheap operation's input quantization
            _, qparams = self.layer_inputs[-1]  # the cheap operation's, just written
            self.quantized.update({primary: qparams, cheap: qparams, out: qparams})
        if module.trim:
            g = self.graph
            out = g.op("Slice", [out, g.const(f"{prefix}.starts", np.array([0], np.int64)),
                                 g.const(f"{prefix}.ends", np.array([module.out_channels], np.int64)),
                                 g.const(f"{prefix}.axes", np.array([1], np.int64))], f"{prefix}.trim")
        return out

    def squeeze_excite(self, prefix, se, x):
        g = self.graph
        scale = g.op("GlobalAveragePool", [x], f"{prefix}.mean")
        scale = g.op("Relu", [self.conv(f"{prefix}.conv_reduce", se.conv_reduce, scale)], f"{prefix}.relu")
        scale = self.conv(f"{prefix}.conv_expand", se.conv_expand, scale)
        gate = g.op("HardSigmoid", [scale], f"{prefix}.gate", alpha=1.0 / 6.0, beta=0.5)
        return g.op("Mul", [x, gate], f"{prefix}.scaled")

    def bottleneck(self, prefix, block, x):
        residual = x
        x = self.ghost_module(f"{prefix}.ghost1", block.ghost1, x)
        if block.dw is not None:
            x = self.conv_bn_act(f"{prefix}.dw", block.dw, x)
        if block.se is not None:
            x = self.squeeze_excite(f"{prefix}.se", block.se, x)
        x = self.ghost_module(f"{prefix}.ghost2", block.ghost2, x)
        if block.shortcut is not None:
            for index, cell in enumerate(block.shortcut):
                residual = self.conv_bn_act(f"{prefix}.shortcut.{index}", cell, residual)
        return self.graph.op("Add", [x, residual], f"{prefix}.out")

    def network(self, net, x):
        g = self.graph
        x = g.op("Relu", [self.conv("conv_stem", net.conv_stem, x)], "relu")
        for index, block in enumerate(net.blocks):
            prefix = f"blocks.{index}"
            if isinstance(block, GhostBottleneck):
                x = self.bottleneck(prefix, block, x)
            elif isinstance(block, ConvBNAct):
                x = self.conv_bn_act(prefix, block, x)
            else:
                raise TypeError(f"{prefix}: no ONNX form for {type(block).__name__}")
        x = g.op("GlobalAveragePool", [x], "pool")
        x = g.op("Relu", [self.conv("conv_head", net.conv_head, x)], "head_relu")
        return g.op("Flatten", [self.dense_as_conv("classifier", net.classifier, x)], "flatten", axis=1)


# --- where the quantization goes -----------------------------------------------------------

@dataclass(frozen=True)
class QParams:
    """uint8 quantization of a tensor: real = (q - zero_point) * scale."""
    scale: float
    zero_point: int

    @classmethod
    def covering(cls, low, high):
        """The uint8 range over [low, high] and 0: what the fake-quant layers compute."""
        scale, zero_point = activation_qparams(Tensor(np.float32(low)), Tensor(np.float32(high)))
        return cls(float(scale.asnumpy()), int(zero_point.asnumpy()))

    def bounds(self):
        return (ACT_QMIN - self.zero_point) * self.scale, (ACT_QMAX - self.zero_point) * self.scale


GATE_QPARAMS = QParams(1.0 / ACT_QMAX, 0)  # a hard sigmoid's output lies in [0, 1]


class _Graph:
    """Producer and consumer look-ups over a node list."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.producer = {out: node for node in nodes for out in node.output}

    def consumers(self, tensor):
        return [node for node in self.nodes if tensor in node.input]

    def redirect(self, tensor, replacement, keep=None):
        for node in self.consumers(tensor):
            if node is not keep:
                node.input[:] = [replacement if name == tensor else name for name in node.input]

    def remove(self, node):
        self.nodes[:] = [n for n in self.nodes if n is not node]
        for out in node.output:
            self.producer.pop(out, None)


def _tensor_qparams(graph, writer):
    """QParams for every activation tensor that can have them, producers before consumers.

    A tensor the int8 network quantizes itself (a ghost module's halves and concatenation)
    takes that quantization; one a quantized layer reads that layer's (the first such
    layer's) input quantization; a convolution's output otherwise its observed range (from 0
    after a ReLU); a hard sigmoid [0, 1].
    """
    layer_of = {id(node): qparams for node, qparams in writer.layer_inputs}
    chosen = dict(writer.quantized)
    for node in graph.nodes:
        for tensor in node.output:
            if tensor in chosen:
                continue
            readers = [r for r in graph.consumers(tensor) if id(r) in layer_of and r.input[0] == tensor]
            if readers:
                chosen[tensor] = layer_of[id(readers[0])]
            elif node.op_type == "Conv" and tensor in writer.output_ranges:
                chosen[tensor] = QParams.covering(*writer.output_ranges[tensor])
            elif node.op_type == "Relu" and node.input[0] in chosen:
                chosen[tensor] = QParams.covering(0.0, chosen[node.input[0]].bounds()[1])
            elif node.op_type == "HardSigmoid":
                chosen[tensor] = GATE_QPARAMS
    return _in_graph_order(graph, chosen)


def _in_graph_order(graph, chosen):
    """``chosen`` ordered by producer (a ReLU must come after the convolution before it)."""
    return {tensor: chosen[tensor] for node in graph.nodes for tensor in node.output if tensor in chosen}


def _insert_quantization(nodes, writer, requantize=True):
    """Quantize every activation tensor once, right after its producer (see the module docstring).

    ``requantize=False`` quantizes only where the int8 network does (each layer's input, with
    the layer's own parameters, and the ghost modules' halves): exactly the int8 network's
    arithmetic, but onnxruntime then runs float convolutions.
    """
    builder = writer.graph
    graph = _Graph(nodes)
    constants = {}
    dequantized = {}  # DequantizeLinear output -> its QParams

    def qdq(tensor, qparams, prefix):
        if qparams not in constants:
            constants[qparams] = (builder.const("act_scale", np.float32(qparams.scale)),
                                  builder.const("act_zero_point", np.uint8(qparams.zero_point)))
        scale, zero = constants[qparams]
        q = builder.helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{prefix}_q"], name=f"{prefix}_q")
        dq = builder.helper.make_node("DequantizeLinear", [q.output[0], scale, zero], [f"{prefix}_dq"],
                                      name=f"{prefix}_dq")
        nodes.extend([q, dq])
        graph.producer.update({q.output[0]: q, dq.output[0]: dq})
        dequantized[dq.output[0]] = qparams
        return q, dq

    chosen = _tensor_qparams(graph, writer) if requantize else _in_graph_order(graph, writer.quantized)
    for tensor, qparams in chosen.items():
        if tensor in writer.output_ranges and any(
                n.op_type == "Relu" and n.output[0] in chosen for n in graph.consumers(tensor)):
            continue  # quantized after its ReLU, which the quantization then replaces
        producer = graph.producer[tensor]
        source = tensor
        if (producer.op_type == "Relu" and qparams.zero_point == ACT_QMIN
                and len(graph.consumers(producer.input[0])) == 1):
            source = producer.input[0]  # uint8 with zero point 0 clamps at 0, as the ReLU does
        q, dq = qdq(source, qparams, tensor)
        graph.redirect(tensor, dq.output[0], keep=q)
        if source != tensor:
            graph.remove(producer)
    # a layer that reads a tensor quantized for another layer requantizes it to its own range
    for node, qparams in writer.layer_inputs:
        if dequantized.get(node.input[0]) != qparams:
            _, dq = qdq(node.input[0], qparams, f"{node.name}.input")
            node.input[0] = dq.output[0]
    return _topological(nodes)


def _topological(nodes):
    produced_by = {out: node for node in nodes for out in node.output}
    ordered, done = [], set()

    def visit(node):
        if id(node) in done:
            return
        done.add(id(node))
        for name in node.input:
            if name in produced_by:
                visit(produced_by[name])
        ordered.append(node)

    for node in nodes:
        visit(node)
    return ordered


# --- the model ------------------------------------------------------------------------------

def ghostnet_to_onnx(net, image_size=224, batch_size=None, requantize=True, int8_weights="int8"):
    """An ``onnx.ModelProto`` of ``net`` (a float ``GhostNet`` or an int8 network), eval mode.

    ``batch_size=None`` leaves the batch axis dynamic; ``requantize``: see _insert_quantization.
    ``int8_weights``: how the int8 weights are stored, ``int8`` (fast; exact where the runtime's
    int8 kernels are) or ``uint8`` (exact everywhere): see src/deploy/weight_storage.py. An int8
    model records it in its metadata.
    """
    from onnx import TensorProto, checker, helper

    if not isinstance(net, GhostNet):
        raise TypeError(f"expected a GhostNet, got {type(net).__name__}")
    writer = GhostNetOnnxWriter(net, int8_weights)
    logits = writer.network(net, INPUT_NAME)
    builder = writer.graph
    nodes = builder.nodes
    if writer.layer_inputs:
        unobserved = sum(1 for node, _ in writer.layer_inputs
                         if node.op_type == "Conv" and node.output[0] not in writer.output_ranges
                         and node.output[0] != writer.classifier_output)
        if unobserved and requantize:
            logger.warning("%d convolutions have no observed output range (never calibrated: run "
                           "train.py --quant); the model quantizes where the int8 network does only, and "
                           "onnxruntime runs float kernels", unobserved)
            requantize = False
        nodes = _insert_quantization(nodes, writer, requantize)
    # the last node's output is the logits; give it a stable name
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = OUTPUT_NAME
    batch = batch_size if batch_size else "batch"
    graph = helper.make_graph(
        nodes, "ghostnet_int8" if writer.layer_inputs else "ghostnet",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, net.num_classes])],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ghostnet-pets")
    model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    if writer.layer_inputs:
        weight_storage.set_storage_metadata(model, int8_weights)
    checker.check_model(model)
    return model


def onnx_model_from_checkpoint(path, width=1.0, num_classes=37, image_size=224, batch_size=None, quant=False,
                               int8_weights="int8"):
    """``(onnx.ModelProto, kind)`` for a float, fake-quant or int8 checkpoint (``quant``: int8 only).

    A fake-quant (fine-tuning) checkpoint is turned into its int8 form first; ``int8_weights``
    as for :func:`ghostnet_to_onnx`.
    """
    # only the weights are read: no compiled CPU kernels needed
    net, kind = load_network(path, width, num_classes, quant, fast_cpu=False)
    if kind == CheckpointKind.FAKE_QUANT:
        net = convert(net)
    net.set_train(False)
    return ghostnet_to_onnx(net, image_size, batch_size, int8_weights=int8_weights), kind
