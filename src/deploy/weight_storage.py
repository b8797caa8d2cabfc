"""How an int8 ONNX model stores its weights, and which storage is right for this CPU.

onnxruntime's x86 int8 kernels for uint8 activations x int8 weights add pairs of products in
int16 (``vpmaddubsw``) on CPUs without VNNI (AVX-512 VNNI or AVX-VNNI): with weights over the
full [-128, 127] the pair sums saturate and the results are wrong. Its uint8 x uint8 kernels
do not. The same int8 weights shifted by 128 into uint8, with zero point 128, dequantize to
the same numbers, so the model computes exactly the same; on a VNNI CPU the int8 storage is
faster (measured: 1.3x at batch 1 and 16, bench/bench_deploy.py ort_int8 vs ort_int8_u8).
"""
import platform

import numpy as np

from src.kernels import cpu_flags

WEIGHT_STORAGES = ("int8", "uint8")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def has_vnni():
    return bool(cpu_flags() & set(VNNI_FLAGS))


def int8_instruction_set():
    """A line for benchmark tables: which int8 dot-product instructions this CPU has."""
    if not is_x86():
        return f"{platform.machine()} (not x86: onnxruntime's int8 kernels do not saturate here)"
    found = sorted(cpu_flags() & set(VNNI_FLAGS))
    return "x86 with VNNI (" + ", ".join(found) + ")" if found else \
        "x86 without VNNI (AVX2 int8 kernels: int8 weights saturate, uint8 weights are exact)"


def storage_for_this_cpu():
    """``int8`` where onnxruntime's u8 x s8 kernels are exact (VNNI, or not x86), else ``uint8``."""
    return "int8" if has_vnni() or not is_x86() else "uint8"


def encode(weight, storage):
    """``(stored integers, zero point)`` of int8 ``weight`` values: as they are (zero point 0),
    or shifted by 128 into uint8 (zero point 128). Both dequantize to the same numbers."""
    if storage == "int8":
        return weight.astype(np.int8), 0
    if storage == "uint8":
        return (weight.astype(np.int16) + 128).astype(np.uint8), 128
    raise ValueError(f"weight storage must be one of {WEIGHT_STORAGES}, got {storage!r}")


def restore_weights(model, storage):
    """Store the 8-bit weights of ``model`` (an ``onnx.ModelProto``: the inputs and zero points of
    DequantizeLinear nodes that are initializers) as ``storage``, in place, shifting values and
    zero points by 128; exact. An initializer shared with other nodes keeps its place there:
    the weight's node gets a re-stored copy. Returns how many weight nodes changed."""
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
    return changed
