"""int8 quantization of GhostNet with standard ops only (so it runs on CPU, GPU and Ascend).

The pieces, as torch.ao / torchao name them:

* :mod:`.primitives`: the arithmetic (ranges, rounding, scales and zero points);
* :mod:`.observers`: cells that watch a tensor's range;
* :mod:`.fake_quant`: the fake-quant (QAT) layers, each holding the observer of its input, and
  ``ConcatQuant``, the one quantization of a ghost module's two halves (whose observer the
  cheap operation and the layer reading the module share);
* :mod:`.int8`: the int8 layers an int8 checkpoint loads into, and ``Int8ConcatQuant``;
* :mod:`.convert`: ``prepare`` (float -> fake-quant), ``calibrate`` / ``observe_ranges``, ``convert``
  (fake-quant -> int8), ``int8_params`` (an int8 checkpoint's content), and the fine-tuning
  switches ``set_bn_frozen`` and ``set_observers_frozen``.
"""
from src.quant.convert import (build_int8_network, calibrate, convert, fake_quant_layers,
                               int8_params, observe_ranges, prepare, set_bn_frozen,
                               set_observers_frozen)
from src.quant.fake_quant import ConcatQuant, QuantConv2d, QuantDense
from src.quant.int8 import Int8ConcatQuant, Int8Conv2d, Int8Dense
from src.quant.observers import RangeObserver
from src.quant.primitives import (ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, WEIGHT_QMIN,
                                  activation_qparams)

__all__ = ["ACT_QMAX", "ACT_QMIN", "WEIGHT_QMAX", "WEIGHT_QMIN", "ConcatQuant", "Int8ConcatQuant", "Int8Conv2d",
           "Int8Dense", "QuantConv2d", "QuantDense", "RangeObserver", "activation_qparams", "build_int8_network",
           "calibrate", "convert", "fake_quant_layers", "int8_params", "observe_ranges", "prepare", "set_bn_frozen",
           "set_observers_frozen"]
