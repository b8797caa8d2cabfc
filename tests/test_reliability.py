"""Issue 12: no bad or half-written file is ever left behind, and every ordinary mistake ends in
one message with exit code 2. One test per case, each building its own bad input."""
import dataclasses
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run
from src.checkpoint import CheckpointError, load_strict, read_checkpoint, save_params
from src.config import TrainConfig
from src.dataset import DatasetError, convert_pets, load_image, load_image_bytes
from src.ghostnet import GhostNet
from src.sample_data import make_sample_pets

NET = ["--width", "0.5", "--num_classes", "4", "--image_size", "32"]
TRAIN = NET + ["--batch_size", "8", "--warmup_epochs", "1", "--lr", "0.8", "--num_workers", "1",
               "--log_every", "100"]


def converter(env, *args):
    return subprocess.run([sys.executable, "-m", "src.dataset", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO)


def error_line(result):
    """The one ERROR line of a script that failed with exit code 2 (and no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def tiny_pets(root, num_classes=2):
    make_sample_pets(str(root), num_classes=num_classes, train_per_class=2, test_per_class=1,
                     size=(32, 32), awkward_files=False)
    return root


def non_finite_copy(checkpoint, path, names=("conv_stem.weight", "bn1.moving_variance")):
    """``checkpoint`` with NaN in the first and inf in the second of ``names``, written with
    MindSpore directly (save_params refuses it)."""
    params = {name: value.asnumpy() for name, value in ms.load_checkpoint(str(checkpoint)).items()}
    params[names[0]] = np.full_like(params[names[0]], np.nan)
    params[names[1]] = np.full_like(params[names[1]], np.inf)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in params.items()], str(path))
    return path


# 12 ----------------------------------------------------------------------------------------

def test_12_hub_arguments_are_checked_by_name():
    spec = importlib.util.spec_from_file_location("hub_conf_12", REPO / "mindspore_hub_conf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    for width in (0, -1, "1.0", 2.0, True):
        with pytest.raises(ValueError, match=rf"^width must be one of 0.5, 1.0, 1.3 \(a number\), got {width!r}$"):
            hub.create_network("ghostnet", width=width)
    for num_classes in (0, -3, 2.5, "37"):
        with pytest.raises(ValueError, match=rf"^num_classes must be an integer of 1 or more, got {num_classes!r}$"):
            hub.create_network("ghostnet_int8", num_classes=num_classes)
    assert hub.create_network("ghostnet", width=1, num_classes=np.int64(3), fast_cpu=False).num_classes == 3


# 14 ----------------------------------------------------------------------------------------

def test_14_numpy_2_is_named_before_mindspore_fails(tmp_path, subprocess_env):
    fake = tmp_path / "site" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "2.0.0"\n')
    env = dict(subprocess_env, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    for command in (["-c", "import src"], [str(REPO / "eval.py"), "--help"]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env,
                                cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == ('ERROR numpy 2.0.0 is installed, but MindSpore 2.10 needs numpy 1.x: '
                                         'run pip install "numpy<2"')
