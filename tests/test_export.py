import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from conftest import REPO
from src.checkpoint import save_params
from src.ghostnet import GhostNet
from src.models import load_network
from src.quant import int8_params, observe_ranges, prepare

SHAPE = ["--width", "0.5", "--num_classes", "4", "--image_size", "32", "--batch_size", "2"]


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory):
    ms.set_seed(11)
    net = prepare(GhostNet(width=0.5, num_classes=4))
    observe_ranges(net, [ms.Tensor(np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32))])
    path = tmp_path_factory.mktemp("int8") / "int8.ckpt"
    save_params(int8_params(net), str(path))
    return path


def export(env, checkpoint, file_format, file_name, *extra):
    return subprocess.run([sys.executable, str(REPO / "export.py"), "--checkpoint_path", str(checkpoint),
                           "--file_format", file_format, "--file_name", str(file_name), *SHAPE, *extra],
                          capture_output=True, text=True, env=env, cwd=REPO)


def eval_mode_logits(checkpoint, x):
    net, _ = load_network(str(checkpoint), width=0.5, num_classes=4)
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def sample_input():
    return np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_mindir_reloads_and_matches_eval_mode(kind, checkpoint_4_classes, int8_checkpoint, tmp_path,
                                              subprocess_env):
    checkpoint = checkpoint_4_classes if kind == "float" else int8_checkpoint
    result = export(subprocess_env, checkpoint, "MINDIR", tmp_path / "net")
    assert result.returncode == 0, result.stderr
    graph = nn.GraphCell(ms.load(str(tmp_path / "net.mindir")))
    x = sample_input()
    np.testing.assert_allclose(graph(ms.Tensor(x)).asnumpy(), eval_mode_logits(checkpoint, x), atol=1e-5)


def test_float_onnx_has_batchnorm_folded_and_matches_the_network(checkpoint_4_classes, tmp_path,
                                                                  subprocess_env):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    result = export(subprocess_env, checkpoint_4_classes, "ONNX", tmp_path / "net.onnx")
    assert result.returncode == 0, result.stderr
    ops = {node.op_type for node in onnx.load(str(tmp_path / "net.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" not in ops
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    x = sample_input()
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(logits, eval_mode_logits(checkpoint_4_classes, x), atol=1e-4)


def test_air_is_refused_off_ascend(checkpoint_4_classes, tmp_path, subprocess_env):
    result = export(subprocess_env, checkpoint_4_classes, "AIR", tmp_path / "net")
    assert result.returncode == 2
    assert "AIR export needs an Ascend device" in result.stderr
    assert not list(tmp_path.iterdir())
