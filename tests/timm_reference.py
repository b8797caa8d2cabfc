"""The timm parity reference, re-created from numpy seeds: weights and inputs are drawn here,
timm's outputs for them are stored in ``tests/fixtures/timm_ghostnet/`` (kilobytes), written by
``tests/fixtures/make_timm_reference.py`` (a maintainer's step: it needs torch and timm; the
tests do not).

The key list (``ghostnet_100_keys.tsv``) is timm's own ``state_dict()`` order and shapes for
``ghostnet_100`` with 1000 classes, as timm wrote it; every other class count differs only in
the classifier's rows.
"""
import hashlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMM_FIXTURES = FIXTURES / "timm_ghostnet"
KEYS_FILE = TIMM_FIXTURES / "ghostnet_100_keys.tsv"

# (reference name, classes, weight seed); the input is drawn from INPUT_SEED for both
REFERENCES = (("ghostnet_100", 1000, 0), ("ghostnet_100_pets37", 37, 2))
INPUT_SEED = 1
INPUT_SHAPE = (2, 3, 224, 224)
# the stored features keep every FEATURE_CHANNEL_STEP-th channel: spatial and padding errors
# show in any channel, and the whole map would weigh 376 KB per reference
FEATURE_CHANNEL_STEP = 10


def timm_keys(num_classes=1000):
    """``[(key, shape)]`` of timm's ghostnet_100 state dict (``num_batches_tracked`` left out)."""
    keys = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        shape = [int(v) for v in shape.strip("[]").split(",")]
        if key.startswith("classifier."):
            shape[0] = num_classes
        keys.append((key, tuple(shape)))
    return keys


def _is_batchnorm(key, names):
    prefix = key.rsplit(".", 1)[0]
    return f"{prefix}.running_mean" in names


def seeded_state(num_classes, seed):
    """A timm ghostnet_100 state dict (``{key: float32 array}``) drawn from ``seed``.

    Convolution and linear weights and biases: uniform in +-1/sqrt(fan_in), PyTorch's default
    bound. BatchNorm: running mean and bias N(0, 0.1), running variance and weight U(0.5, 1.5),
    so that every BatchNorm does something in eval mode.
    """
    rng = np.random.default_rng(seed)
    keys = timm_keys(num_classes)
    names = {key for key, _ in keys}
    fan_in = {key.rsplit(".", 1)[0]: int(np.prod(shape[1:])) for key, shape in keys
              if key.endswith(".weight") and len(shape) > 1}
    state = {}
    for key, shape in keys:
        field = key.rsplit(".", 1)[1]
        if _is_batchnorm(key, names):
            if field in ("running_var", "weight"):
                values = rng.uniform(0.5, 1.5, shape)
            else:
                values = rng.normal(0.0, 0.1, shape)
        else:
            bound = 1.0 / np.sqrt(fan_in[key.rsplit(".", 1)[0]])
            values = rng.uniform(-bound, bound, shape)
        state[key] = values.astype(np.float32)
    return state


def seeded_input():
    return np.random.default_rng(INPUT_SEED).standard_normal(INPUT_SHAPE, dtype=np.float32)


def outputs_file(stem):
    return TIMM_FIXTURES / f"{stem}_outputs.npz"


def digest(state, x):
    """SHA-256 of the weights (in key order) and the input, as stored beside timm's outputs."""
    sha = hashlib.sha256()
    for key in sorted(state):
        sha.update(key.encode())
        sha.update(np.ascontiguousarray(state[key]).tobytes())
    sha.update(np.ascontiguousarray(x).tobytes())
    return sha.hexdigest()


def stored_outputs(stem, num_classes, seed):
    """timm's ``(logits, features[:, ::FEATURE_CHANNEL_STEP])`` for :func:`seeded_state` and
    :func:`seeded_input`, after checking that numpy draws the weights and input timm was given
    (a numpy whose generator streams changed would otherwise look like a parity failure)."""
    with np.load(outputs_file(stem)) as stored:
        drawn = digest(seeded_state(num_classes, seed), seeded_input())
        if str(stored["digest"]) != drawn:
            raise AssertionError(f"numpy {np.__version__} draws other weights or inputs than the ones "
                                 f"{outputs_file(stem).name} was made for: run tests/fixtures/make_timm_reference.py")
        return stored["logits"], stored["features"]
