"""Strict checkpoint loading: every mismatch is reported and refused unless asked otherwise.

MindSpore's ``load_param_into_net`` silently skips parameters it cannot match; a network
with random weights then evaluates without complaint. Everything in this package loads
through :func:`load_strict` instead, and reads files through :func:`read_checkpoint`. Both
refuse NaN or infinite values, and checkpoints are written by :func:`save_params`, atomically
(src.outputs.write_atomically) and never with non-finite values.
"""
import logging
import os
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np

from src.outputs import write_atomically

logger = logging.getLogger(__name__)

# Entries a training checkpoint carries beside the network: optimizer state and the
# position to resume from. Loading a network ignores them.
TRAINING_STATE_PREFIXES = ("moments.", "train_state.")
CLASSIFIER_PREFIX = "classifier."


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the network; the message says what to do."""


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


def read_checkpoint(path):
    """Read a MindSpore checkpoint into ``{name: Parameter}`` with errors that name the file.

    A checkpoint with NaN or infinite values is refused (:func:`check_finite`).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        params = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long internals
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
              if not name.startswith(TRAINING_STATE_PREFIXES)}
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
        target.set_data(ms.Tensor(data.astype(ms.dtype_to_nptype(target.dtype))))
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
    return write_atomically(path, lambda tmp: ms.save_checkpoint(entries, tmp))
