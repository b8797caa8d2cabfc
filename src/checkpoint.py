"""Checkpoints: what kind a file holds, strict loading, saving.

All knowledge of the checkpoint formats sits here: the three kinds (:class:`CheckpointKind`)
and the parameter-name suffixes that tell them apart. MindSpore's ``load_param_into_net``
silently skips parameters it cannot match; a network with random weights then evaluates
without complaint. Everything in this package loads through :func:`load_strict` instead:
every mismatch is reported and refused unless asked otherwise, and files are read through
:func:`read_checkpoint`. Both refuse NaN or infinite values; :func:`save_params` writes
atomically (src.outputs.write_atomically) and never with non-finite values.
"""
import enum
import logging
import os
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np

from src.errors import CheckpointError
from src.outputs import write_atomically

logger = logging.getLogger(__name__)

# The int8 layers' (src/quant/int8.py) own parameters, and the fake-quant layers' input
# ranges (src/quant/fake_quant.py): their names mark the kind of a checkpoint.
INPUT_QPARAM_SUFFIXES = ("act_scale", "act_zero_point")
INT8_SUFFIXES = ("weight_scale",) + INPUT_QPARAM_SUFFIXES
FAKE_QUANT_SUFFIXES = ("input_quant.act_min", "input_quant.act_max")
# The observed output ranges of the convolutions, in an int8 and a fake-quant checkpoint.
OUTPUT_RANGE_SUFFIXES = ("output_min", "output_max", "output_range.act_min", "output_range.act_max")
# Input quantizations that int8 and fake-quant checkpoints held per layer until each ghost
# module got one quantization for its concatenation, shared by the layer reading it
# (src.quant.convert.share_concat_quantization); the first release held no output ranges.
INPUT_QUANTIZATION_SUFFIXES = INPUT_QPARAM_SUFFIXES + FAKE_QUANT_SUFFIXES


class CheckpointKind(str, enum.Enum):
    """What a checkpoint holds: a float network, the fake-quant (int8 fine-tuning) form, or int8."""
    FLOAT = "float"
    FAKE_QUANT = "fake-quant"
    INT8 = "int8"

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)

    @property
    def description(self):
        return {"float": "a float checkpoint",
                "fake-quant": "an int8 fine-tuning (fake-quant) checkpoint",
                "int8": "an int8 checkpoint"}[self.value]

    @classmethod
    def of(cls, params):
        """The kind of ``{name: value}`` (a read checkpoint or a network's parameters)."""
        names = list(params)
        if any(n.endswith(INT8_SUFFIXES) for n in names):
            return cls.INT8
        if any(n.endswith(FAKE_QUANT_SUFFIXES) for n in names):
            return cls.FAKE_QUANT
        return cls.FLOAT


def require_kind(path, params, allowed, hint):
    """The kind of ``params`` (read from ``path``); :class:`CheckpointError` with ``hint`` unless
    it is one of ``allowed``."""
    kind = CheckpointKind.of(params)
    if kind not in allowed:
        raise CheckpointError(f"{path} is {kind.description}; {hint}")
    return kind


# Entries a training checkpoint carries beside the network: optimizer state and the
# position to resume from. Loading a network ignores them.
TRAINING_STATE_PREFIXES = ("moments.", "train_state.")
# Entries that earlier releases wrote and that hold nothing now: fake-quant checkpoints held
# each observer's calibration switch (always 0 when saved) and each convolution's BatchNorm
# freeze switch (train.py sets it from the epoch) until they became compile-time flags.
RETIRED_SUFFIXES = (".calibrating", ".bn_frozen")
CLASSIFIER_PREFIX = "classifier."


@dataclass
class LoadReport:
    loaded: int = 0
    reinitialised: list = field(default_factory=list)
    training_state: dict = field(default_factory=dict)


def _as_numpy(value):
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def non_finite_names(params):
    """Names of the float tensors of ``{name: Parameter|Tensor|ndarray}`` holding NaN or inf."""
    bad = []
    for name, value in params.items():
        data = _as_numpy(value)
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            bad.append(name)
    return bad


def describe_non_finite(bad, total):
    """``NaN or infinite values in N of M tensors (a, b, c, ...)``."""
    shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return f"NaN or infinite values in {len(bad)} of {total} tensors ({shown})"


def check_finite(params, source):
    """Refuse NaN or infinite float tensors (what a diverged run leaves), naming how many and the first few."""
    bad = non_finite_names(params)
    if bad:
        raise CheckpointError(f"{source} holds {describe_non_finite(bad, len(params))}: it comes from a "
                              "diverged run. Use an earlier checkpoint, or train again with a lower --lr.")
    return params


def read_checkpoint(path, names=None):
    """Read a MindSpore checkpoint into ``{name: Parameter}`` with errors that name the file.

    ``names``: a predicate on parameter names; only those it accepts are read. A checkpoint
    with NaN or infinite values is refused (:func:`check_finite`).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        params = ms.load_checkpoint(path, choice_func=names)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long internals
        if names is not None and isinstance(err, ValueError) and "empty after filter" in str(err):
            return {}  # MindSpore's way of saying that no name passed the filter
        raise CheckpointError(
            f"cannot read checkpoint {path}: {str(err).splitlines()[0]}. "
            "Is it a MindSpore .ckpt? Convert timm weights with `python -m src.convert_weights`."
        ) from err
    return check_finite(params, path)


def _shape(value):
    return tuple(value.shape)


def _describe(names, limit=20):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_strict(net, checkpoint, allow_new_classifier=False, source="checkpoint"):
    """Load ``checkpoint`` (a path or a ``{name: Parameter|Tensor|ndarray}`` dict) into ``net``.

    Missing, unexpected and shape-mismatched names raise :class:`CheckpointError` naming
    them. With ``allow_new_classifier`` a classifier of another size (or none) is left at
    the network's fresh initialisation and reported, which is how ImageNet weights are
    fine-tuned on Pets.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = read_checkpoint(source)
    else:
        check_finite(checkpoint, source)
    report = LoadReport()
    params = {name: value for name, value in checkpoint.items()
              if not name.startswith(TRAINING_STATE_PREFIXES) and not name.endswith(RETIRED_SUFFIXES)}
    report.training_state = {name: value for name, value in checkpoint.items()
                             if name.startswith(TRAINING_STATE_PREFIXES)}
    targets = dict(net.parameters_and_names())

    if allow_new_classifier:
        head = [n for n in targets if n.startswith(CLASSIFIER_PREFIX)]
        fits = all(n in params and _shape(params[n]) == _shape(targets[n]) for n in head)
        if not fits:
            old = params.get(CLASSIFIER_PREFIX + "bias")
            was = f"{old.shape[0]} classes" if old is not None else "no classifier"
            for name in list(params):
                if name.startswith(CLASSIFIER_PREFIX):
                    del params[name]
            report.reinitialised = head
            logger.warning("classifier re-initialised for %d classes (%s had %s)",
                           net.num_classes, source, was)
        targets = {n: p for n, p in targets.items() if n not in report.reinitialised}

    missing = [n for n in targets if n not in params]
    unexpected = [n for n in params if n not in targets]
    mismatched = [f"{n} {_shape(params[n])} vs network {_shape(targets[n])}"
                  for n in targets if n in params and _shape(params[n]) != _shape(targets[n])]
    if (unexpected and not mismatched and all(n.endswith(INPUT_QUANTIZATION_SUFFIXES) for n in unexpected)
            and all(n.endswith(OUTPUT_RANGE_SUFFIXES) for n in missing)):
        raise CheckpointError(
            f"{source} was written before each ghost module's concatenation got one int8 scale (it "
            f"holds {len(unexpected)} input quantizations that are now shared: {_describe(unexpected, 3)}), "
            "so its int8 arithmetic is not this release's. Calibrate and fine-tune again from the float "
            "checkpoint with `train.py --quant`.")
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_describe(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} with another shape: {_describe(mismatched)}")
        hint = ("Check --width and --num_classes against the checkpoint"
                + ("" if allow_new_classifier else
                   "; to fine-tune on another class count, load with a new classifier "
                   "(train.py --pretrained does)"))
        raise CheckpointError(f"{source} does not fit the network: " + "; ".join(problems)
                              + f". {hint}.")

    for name, target in targets.items():
        data = _as_numpy(params[name])
        target.set_data(ms.Tensor(data, dtype=target.dtype))  # dtype_to_nptype warns once per call in 2.10
    report.loaded = len(targets)
    return report


def save_params(params, path):
    """Save ``{name: ndarray|Tensor|Parameter}`` as a MindSpore checkpoint, atomically.

    NaN or infinite values are refused (:class:`CheckpointError`): nothing is written.
    """
    bad = non_finite_names(params)
    if bad:
        raise CheckpointError(f"not writing {path}: {describe_non_finite(bad, len(params))}. The run "
                              "diverged: train again with a lower --lr.")
    entries = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(value)}
               for name, value in params.items()]

    def write(tmp):
        disabled = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # MindSpore logs a line of its own before it raises
        try:
            ms.save_checkpoint(entries, tmp)
        finally:
            logging.disable(disabled)
    needed = sum(int(value.nbytes) if hasattr(value, "nbytes") else _as_numpy(value).nbytes
                 for value in params.values())
    return write_atomically(path, write, needed=needed)
