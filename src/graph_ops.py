"""Operators whose call compiles to one graph node.

A call of a function, of a tensor method or an operator like ``*`` on tensors, and an index
into a tuple (``a, b = f()``) each parse into a subgraph at each call site, which the graph
compile specializes one by one; in a network of a hundred quantized layers, those make up
much of the first step's compile. The quantized layers and the kernels' backward functions
index operators' results with :data:`item`, and the int8 layers compute their per-layer
arithmetic with the primitives below. They compute the same in PyNative mode.
"""
import mindspore.ops as ops
from mindspore.ops import Primitive


class _TupleItem(Primitive):
    """``item(values, index)``: ``values[index]`` for a tuple (a multi-output operator's
    result) and a constant index. In a graph the framework's ``TupleGetItem`` node, which
    PyNative mode cannot run: there the index is taken in Python."""

    def __init__(self, name="TupleGetItem"):  # Primitive's copy calls the class with its name
        super().__init__(name)

    def __call__(self, values, index):
        return values[index]


item = _TupleItem()
cast = ops.Cast()
squeeze = ops.Squeeze()
reshape = ops.Reshape()
mul = ops.Mul()
