"""Networks by name, and the right network for a checkpoint (float, fake-quant or int8)."""
import logging
import numbers

import numpy as np

from src.checkpoint import CheckpointError, load_strict, read_checkpoint
from src.fast_cpu import enable_fast_cpu_path
from src.ghostnet import WIDTHS, GhostNet
from src.quant import build_int8_network, checkpoint_kind, export_int8_params, quantize_network

logger = logging.getLogger(__name__)

KIND_DESCRIPTIONS = {
    "float": "a float checkpoint",
    "qat": "an int8 fine-tuning (fake-quant) checkpoint",
    "int8": "an int8 checkpoint",
}


NETWORK_KINDS = {"ghostnet": "float", "ghostnet_int8": "int8"}  # create_network's names


def create_network(name, width=1.0, num_classes=37, fast_cpu=True, **kwargs):
    """``ghostnet`` (float) or ``ghostnet_int8`` (loads int8 checkpoints).

    ``fast_cpu``: on the CPU, run depthwise and stem convolutions on src/fast_cpu.py's path.
    """
    if name not in NETWORK_KINDS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORK_KINDS)}")
    widths = sorted(WIDTHS.values())
    if not _is_number(width, numbers.Real) or width not in widths:
        raise ValueError(f"width must be one of {', '.join(map(str, widths))} (a number), got {width!r}")
    if not _is_number(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer of 1 or more, got {num_classes!r}")
    return network_for_kind(NETWORK_KINDS[name], float(width), int(num_classes), fast_cpu, **kwargs)


def _is_number(value, kind):
    return isinstance(value, kind) and not isinstance(value, bool)


def network_for_kind(kind, width, num_classes, fast_cpu=True, **kwargs):
    """The network a checkpoint of ``kind`` (see KIND_DESCRIPTIONS) loads into; ``kwargs`` go
    to the float GhostNet."""
    if kind == "float":
        net = GhostNet(width=width, num_classes=num_classes, **kwargs)
    elif kind == "qat":
        net = quantize_network(GhostNet(width=width, num_classes=num_classes, **kwargs))
    else:
        net = build_int8_network(width=width, num_classes=num_classes)
    return enable_fast_cpu_path(net) if fast_cpu else net


def require_kind(path, params, allowed, hint):
    kind = checkpoint_kind(params)
    if kind not in allowed:
        raise CheckpointError(f"{path} is {KIND_DESCRIPTIONS[kind]}; {hint}")
    return kind


def load_network(path, width=1.0, num_classes=37, quant=False, fast_cpu=True):
    """Build the network ``path`` holds and load it strictly; ``quant`` requires an int8 one.

    Returns ``(net, kind)``. ``fast_cpu=False`` keeps the framework's convolutions (for
    exporting graphs that must not reference this machine's compiled kernels).
    """
    params = read_checkpoint(path)
    if quant:
        require_kind(path, params, ("int8", "qat"),
                     "--quant expects an int8 checkpoint written by `train.py --quant`")
    kind = checkpoint_kind(params)
    net = network_for_kind(kind, width, num_classes, fast_cpu)
    params = with_unrecorded_output_ranges(params, net, path)
    load_strict(net, params, source=path)
    return net, kind


def load_int8_network(fake_quant_net, width=1.0, num_classes=37):
    """The int8 network holding what a fake-quant network (eval mode) would export."""
    fake_quant_net.set_train(False)
    net = build_int8_network(width=width, num_classes=num_classes)
    load_strict(net, export_int8_params(fake_quant_net), source="the fake-quant network")
    return net


OUTPUT_RANGE_SUFFIXES = ("output_min", "output_max", "output_range.act_min", "output_range.act_max")


def with_unrecorded_output_ranges(params, net, source):
    """``params`` plus zero output ranges where an int8 or fake-quant checkpoint written before
    they were recorded lacks them (one warning); every other missing name stays missing."""
    missing = [name for name, _ in net.parameters_and_names()
               if name.endswith(OUTPUT_RANGE_SUFFIXES) and name not in params]
    if not missing:
        return params
    logger.warning("%s holds no output ranges (written before they were recorded): it loads, but the int8 "
                   "ONNX export then quantizes layer inputs only. Calibrate again with train.py --quant "
                   "to record them.", source)
    filled = dict(params)
    filled.update({name: np.zeros(1, np.float32) for name in missing})
    return filled
