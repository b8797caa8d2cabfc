"""How an int8 ONNX model stores its weights, and which storage a runtime computes exactly here.

On x86 CPUs without VNNI (AVX-512 VNNI, AVX-VNNI or AMX), the uint8 activation x int8 weight
kernels of onnxruntime and of OpenVINO add pairs of products in int16 (``vpmaddubsw``): with
weights over the full [-128, 127] the pair sums saturate and the results are wrong. The same
int8 weights shifted by 128 into uint8, with zero point 128, dequantize to the same numbers
and do not saturate: onnxruntime runs them on its exact uint8 x uint8 kernels (bit for bit
the int8 storage's results where those are exact), OpenVINO on a slower path that is not
its int8 convolution kernels (its results differ from the int8 kernels' within rounding).
Where the int8 kernels are exact, the int8 storage is the fast one.

Which kernels a runtime runs is asked of the runtime, not of /proc/cpuinfo (an emulator or a
hypervisor may show flags the runtime does not use): :func:`int8_weights_exact` runs a probe,
three QDQ convolutions whose exact answers are known and whose every product pair overflows
16 bits, once per process and runtime. This module needs numpy and onnx only (and the runtime
it asks), not MindSpore, so that a deployment's own program can use :func:`for_this_cpu`.
"""
import functools
import logging
import platform

import numpy as np

logger = logging.getLogger(__name__)

WEIGHT_STORAGES = ("int8", "uint8")
RUNTIMES = ("onnxruntime", "openvino")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
METADATA_KEY = "ghostnet.int8_weights"

# the probe: inputs quantize to 255, weights are +127 (even output channels) and -128 (odd ones),
# and the output scale puts the exact result of an odd channel at -PROBE_EXACT; saturated pair
# sums land near half of it
PROBE_EXACT = 100
PROBE_CONVS = (  # (input channels, kernel, stride, groups): a 1x1, the stem, a depthwise
    (64, 1, 1, 1), (3, 3, 2, 1), (32, 3, 1, 32))
PROBE_SIZE = 8


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def int8_instruction_set():
    """A line for benchmark tables: the int8 dot-product instructions /proc/cpuinfo shows."""
    from src.kernels.library import cpu_flags  # MindSpore's side of the package: not for_this_cpu's

    if not is_x86():
        return f"{platform.machine()} (not x86)"
    found = sorted(cpu_flags() & set(VNNI_FLAGS))
    return "x86 with VNNI (" + ", ".join(found) + ")" if found else "x86 without VNNI (AVX2 int8 kernels)"


def encode(weight, storage):
    """``(stored integers, zero point)`` of int8 ``weight`` values: as they are (zero point 0),
    or shifted by 128 into uint8 (zero point 128). Both dequantize to the same numbers."""
    if storage == "int8":
        return weight.astype(np.int8), 0
    if storage == "uint8":
        return (weight.astype(np.int16) + 128).astype(np.uint8), 128
    raise ValueError(f"weight storage must be one of {WEIGHT_STORAGES}, got {storage!r}")


# --- the probe --------------------------------------------------------------------------------

def probe_model(storage="int8"):
    """Serialized ONNX model of the probe (see the module docstring), weights stored as ``storage``:
    input ``x`` (1, 64, 8, 8), one output per convolution of PROBE_CONVS, in units of its output
    scale: -PROBE_EXACT in odd channels wherever the whole kernel window lies inside the image."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, outputs = [], [], []

    def const(name, value):
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes.append(helper.make_node("QuantizeLinear", ["x", const("x_scale", np.float32(1)),
                                                     const("x_zero", np.uint8(0))], ["x_q"]))
    nodes.append(helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]))
    for i, (channels, kernel, stride, groups) in enumerate(PROBE_CONVS):
        out_channels = max(groups, 16)
        weight = np.full((out_channels, channels // groups, kernel, kernel), 127, np.int64)
        weight[1::2] = -128
        stored, zero = encode(weight, storage)
        source = "x_dq"
        if channels != PROBE_CONVS[0][0]:
            source = f"x{i}"
            nodes.append(helper.make_node("Slice", ["x_dq", const(f"start{i}", np.array([0])),
                                                    const(f"end{i}", np.array([channels])),
                                                    const(f"axis{i}", np.array([1]))], [source]))
        accumulated = channels // groups * kernel * kernel * 255 * 128
        weight_scale = np.full(out_channels, 1 / 1024, np.float32)
        output_scale = np.float32(accumulated / 1024 / PROBE_EXACT)
        nodes += [
            helper.make_node("DequantizeLinear", [const(f"w{i}", stored), const(f"w_scale{i}", weight_scale),
                                                  const(f"w_zero{i}", np.full(out_channels, zero, stored.dtype))],
                             [f"w{i}_dq"], axis=0),
            helper.make_node("Conv", [source, f"w{i}_dq"], [f"y{i}"], kernel_shape=[kernel, kernel],
                             strides=[stride, stride], pads=[kernel // 2] * 4, group=groups),
            # the convolution's output quantized right after it: the pattern of an int8 kernel
            helper.make_node("QuantizeLinear", [f"y{i}", const(f"y_scale{i}", output_scale),
                                                const(f"y_zero{i}", np.uint8(128))], [f"y{i}_q"]),
            helper.make_node("DequantizeLinear", [f"y{i}_q", f"y_scale{i}", f"y_zero{i}"], [f"y{i}_dq"]),
            helper.make_node("Div", [f"y{i}_dq", const(f"unit{i}", output_scale)], [f"out{i}"])]
        side = (PROBE_SIZE - 1) // stride + 1
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, out_channels, side, side]))
    graph = helper.make_graph(nodes, "int8_probe", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, PROBE_CONVS[0][0], PROBE_SIZE, PROBE_SIZE])], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def probe_input():
    return np.full((1, PROBE_CONVS[0][0], PROBE_SIZE, PROBE_SIZE), 255, np.float32)


def probe_answers(outputs):
    """Minus the value at the centre of channel 1 of each probe output: PROBE_EXACT each where the
    kernels are exact."""
    return [-float(np.asarray(out)[0, 1, out.shape[2] // 2, out.shape[3] // 2]) for out in outputs]


def run_probe(runtime, storage="int8"):
    """The probe's answers (:func:`probe_answers`) in ``runtime`` on this machine's CPU."""
    model = probe_model(storage)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return probe_answers(session.run(None, {"x": probe_input()}))
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(model, b""), "CPU", {"INFERENCE_NUM_THREADS": 1})
        results = compiled(probe_input())
        return probe_answers([results[output] for output in compiled.outputs])
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")


@functools.lru_cache(maxsize=None)
def int8_weights_exact(runtime):
    """Whether ``runtime``'s uint8 x int8 kernels compute the probe exactly on this CPU."""
    try:
        answers = run_probe(runtime)
    except ImportError:
        raise
    except Exception as err:  # a runtime that cannot run the probe: the storage exact everywhere
        logger.warning("the int8 probe failed in %s (%s); int8 weights are stored as uint8, exact on every "
                       "CPU", runtime, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False
    # saturated pair sums land near half the answer; a bf16 tail may round the exact one slightly
    exact = all(round(answer) == PROBE_EXACT for answer in answers)
    logger.debug("%s int8 probe: %s (exact: %d each)", runtime, answers, PROBE_EXACT)
    return exact


def storage_for(runtime):
    """``int8`` where ``runtime``'s int8 kernels are exact here (the fast storage), else ``uint8``."""
    return "int8" if int8_weights_exact(runtime) else "uint8"


def probe_summary(runtime):
    """A short line for tables: what the probe says of ``runtime`` here."""
    try:
        exact = int8_weights_exact(runtime)
    except ImportError as err:
        return f"{err.name or runtime} not installed"
    return "int8 weights exact" if exact else "int8 weights saturate (uint8 weights used)"


# --- re-storing the weights of a model ---------------------------------------------------------

def restore_weights(model, storage):
    """Store the 8-bit weights of ``model`` (an ``onnx.ModelProto``: the inputs and zero points of
    DequantizeLinear nodes that are initializers) as ``storage``, in place, shifting values and
    zero points by 128; exact. An initializer shared with other nodes keeps its place there:
    the weight's node gets a re-stored copy. Records the storage in the model's metadata
    (:func:`set_storage_metadata`) when anything changed. Returns how many weight nodes changed."""
    from onnx import numpy_helper  # optional package: only models read from files come here

    source = np.uint8 if storage == "int8" else np.int8
    shift = -128 if storage == "int8" else 128
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    arrays = {}

    def array(name):
        if name not in arrays and name in initializers:
            arrays[name] = numpy_helper.to_array(initializers[name])
        return arrays.get(name)

    restored = {}  # original name -> name of its re-stored copy
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        values, zero = array(node.input[0]), array(node.input[2])
        if values is None or zero is None or values.dtype != source or zero.dtype != source:
            continue
        for position in (0, 2):
            name = node.input[position]
            if name not in restored:
                restored[name] = f"{name}_{storage}"
                copy = (arrays[name].astype(np.int16) + shift).astype(storage)
                model.graph.initializer.append(numpy_helper.from_array(copy, restored[name]))
            node.input[position] = restored[name]
        changed += 1
    used = {name for node in model.graph.node for name in node.input}
    used.update(output.name for output in model.graph.output)
    for name in restored:
        if name not in used:
            model.graph.initializer.remove(initializers[name])
    if changed:
        set_storage_metadata(model, storage)
    return changed


def set_storage_metadata(model, storage):
    """Record in ``model`` how its weights are stored and where that is exact."""
    exact_on = ("every CPU" if storage == "uint8" else
                "x86 with VNNI or AMX, and non-x86 CPUs; on x86 without VNNI run it through "
                "src.deploy.weight_storage.for_this_cpu (our predictors do), or export with --int8_weights uint8")
    entries = {METADATA_KEY: storage, "ghostnet.exact_on": exact_on}
    kept = [entry for entry in model.metadata_props if entry.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def has_8bit_weights(model):
    """Whether an ``onnx.ModelProto`` has 8-bit initializers that DequantizeLinear nodes read."""
    from onnx import TensorProto

    eight_bit = {tensor.name for tensor in model.graph.initializer
                 if tensor.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(tensor.dims) > 1}
    return any(node.op_type == "DequantizeLinear" and node.input[0] in eight_bit for node in model.graph.node)


def for_this_cpu(model, runtime="onnxruntime", description="ONNX model"):
    """``model`` (a path, serialized bytes or an ``onnx.ModelProto``) with its int8 weights stored
    as ``runtime`` computes them exactly, and fastest, on this CPU (serialized bytes); ``model``
    itself (a ModelProto serialized) when nothing changes. A float model is not probed. A
    user's own runtime takes it in one line::

        session = onnxruntime.InferenceSession(for_this_cpu("ghostnet.onnx"))
        compiled = core.compile_model(core.read_model(for_this_cpu("ghostnet.onnx", "openvino")), "CPU")
    """
    import onnx

    if isinstance(model, onnx.ModelProto):  # the runtimes take paths and bytes
        model = model.SerializeToString()
        proto = onnx.load_from_string(model)
    else:
        try:
            proto = onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray, memoryview)) \
                else onnx.load(model)
        except Exception:  # not an ONNX file: the runtime says so when it reads it
            return model
    if not has_8bit_weights(proto):  # a float model: nothing to store, no probe to run
        return model
    storage = storage_for(runtime)
    changed = restore_weights(proto, storage)
    if not changed:
        return model
    logger.info("%s: %d weight tensors stored as %s for %s on this CPU (%s)", description, changed, storage,
                runtime, probe_summary(runtime))
    return proto.SerializeToString()
