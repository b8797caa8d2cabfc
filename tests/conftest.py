import os
from pathlib import Path

import mindspore as ms
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
ms.set_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


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
