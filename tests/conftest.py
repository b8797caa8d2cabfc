import os
import subprocess
import sys
from pathlib import Path

import src  # noqa: F401  (before MindSpore: sets OMP_WAIT_POLICY)
import mindspore as ms
import pytest

REPO = Path(__file__).resolve().parents[1]

# the network every small run here builds, and the shape every int8 recipe run here trains
SMALL_NET = ["--width", "0.5", "--num_classes", "4", "--image_size", "32"]
SMALL = SMALL_NET + ["--batch_size", "16", "--num_workers", "1", "--log_every", "100"]

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
ms.set_seed(0)


def pytest_collection_modifyitems(items):
    """A test on the trained int8 recipe is slow however short it is: the recipe trains first."""
    for item in items:
        if "int8_recipe" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["GLOG_v"] = "3"  # keep MindSpore's C++ warnings out of captured output
    return env


@pytest.fixture(scope="session")
def sample_pets(tmp_path_factory):
    """A converted 4-class sample set: ``(root, out_dir, make_sample_pets result)``."""
    from src.dataset import convert_pets
    from src.sample_data import make_sample_pets

    root = tmp_path_factory.mktemp("pets")
    made = make_sample_pets(str(root), num_classes=4, train_per_class=12, test_per_class=5)
    out = tmp_path_factory.mktemp("pets_mindrecord")
    convert_pets(str(root), str(out), overwrite=True)
    return root, out, made


@pytest.fixture(scope="session")
def checkpoint_4_classes(tmp_path_factory):
    """A width-0.5, 4-class GhostNet checkpoint with random weights."""
    from src.checkpoint import save_params
    from src.ghostnet import GhostNet

    ms.set_seed(3)
    net = GhostNet(width=0.5, num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "random_4.ckpt"
    save_params({n: p.asnumpy() for n, p in net.parameters_and_names()}, str(path))
    return path


def run(env, script, *args, wait=True):
    """Run one of the repository's scripts; returns the CompletedProcess, or with ``wait=False``
    the running Popen (stderr merged into its stdout)."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def int8_recipe(tmp_path_factory):
    """Float training, int8 calibration, int8 fine-tuning on 4 learnable classes (100 test
    images): ``(folder, env)``; folders float/, ptq/, qat/ and data/."""
    from src.dataset import convert_pets
    from src.sample_data import make_sample_pets

    env = dict(os.environ, PYTHONPATH=str(REPO), GLOG_v="3")
    root = tmp_path_factory.mktemp("int8")
    make_sample_pets(str(root / "pets"), num_classes=4, train_per_class=40, test_per_class=25,
                     size=(48, 64), awkward_files=False)
    convert_pets(str(root / "pets"), str(root / "data"))
    data = ["--dataset_path", root / "data" / "train.mindrecord",
            "--eval_dataset_path", root / "data" / "test.mindrecord"]
    result = run(env, "train.py", *data, *SMALL, "--output_dir", root / "float", "--epoch_size", 10,
                 "--warmup_epochs", 1, "--lr", 0.8)
    assert result.returncode == 0, result.stderr
    for folder, epochs in (("ptq", 0), ("qat", 2)):
        result = run(env, "train.py", *data, *SMALL, "--output_dir", root / folder, "--quant",
                     "--pretrained", root / "float" / "ghostnet-final.ckpt", "--epoch_size", epochs,
                     "--calib_batches", 4, "--quant_bn_freeze_epoch", 1, "--quant_observer_freeze_epoch", 1)
        assert result.returncode == 0, result.stderr
    return root, env
