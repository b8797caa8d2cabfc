"""Networks by name (the MindSpore Hub entry), and the right network for a checkpoint."""
import logging
import numbers

from src.checkpoint import CheckpointKind, load_strict, read_checkpoint, require_kind
from src.ghostnet import WIDTH_CHOICES, GhostNet
from src.kernels import enable_fast_cpu_path
from src.quant import build_int8_network, prepare

logger = logging.getLogger(__name__)

NETWORK_KINDS = {"ghostnet": CheckpointKind.FLOAT, "ghostnet_int8": CheckpointKind.INT8}  # create_network's names


def create_network(name, width=1.0, num_classes=37, fast_cpu=True, **kwargs):
    """``ghostnet`` (float) or ``ghostnet_int8`` (loads int8 checkpoints).

    ``fast_cpu``: on the CPU, run depthwise and stem convolutions on src/kernels' path.
    """
    if name not in NETWORK_KINDS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORK_KINDS)}")
    if not _is_number(width, numbers.Real) or width not in WIDTH_CHOICES:
        raise ValueError(f"width must be one of {', '.join(map(str, WIDTH_CHOICES))} (a number), got {width!r}")
    if not _is_number(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer of 1 or more, got {num_classes!r}")
    return network_for_kind(NETWORK_KINDS[name], float(width), int(num_classes), fast_cpu, **kwargs)


def _is_number(value, kind):
    return isinstance(value, kind) and not isinstance(value, bool)


def network_for_kind(kind, width, num_classes, fast_cpu=True, **kwargs):
    """The network a checkpoint of ``kind`` (a :class:`CheckpointKind`) loads into; ``kwargs``
    go to the float GhostNet."""
    kind = CheckpointKind(kind)
    if kind == CheckpointKind.FLOAT:
        net = GhostNet(width=width, num_classes=num_classes, **kwargs)
    elif kind == CheckpointKind.FAKE_QUANT:
        net = prepare(GhostNet(width=width, num_classes=num_classes, **kwargs))
    else:
        net = build_int8_network(width=width, num_classes=num_classes)
    return enable_fast_cpu_path(net) if fast_cpu else net


def load_network(path, width=1.0, num_classes=37, quant=False, fast_cpu=True):
    """Build the network ``path`` holds and load it strictly; ``quant`` requires an int8 one.

    Returns ``(net, kind)``. ``fast_cpu=False`` keeps the framework's convolutions (for
    exporting graphs that must not reference this machine's compiled kernels).
    """
    params = read_checkpoint(path)
    if quant:
        require_kind(path, params, (CheckpointKind.INT8, CheckpointKind.FAKE_QUANT),
                     "--quant expects an int8 checkpoint written by `train.py --quant`")
    kind = CheckpointKind.of(params)
    net = network_for_kind(kind, width, num_classes, fast_cpu)
    load_strict(net, params, source=path)
    return net, kind
