import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest
from safetensors.numpy import save_file

from src.checkpoint import CheckpointError, load_strict, read_checkpoint, save_params
from src.convert_weights import convert, timm_to_zoo_name
from src.ghostnet import GhostNet
from src.deploy.fold import fold_batchnorm_for_inference
from src.models import create_network
from timm_reference import FEATURE_CHANNEL_STEP, REFERENCES, seeded_input, seeded_state, stored_outputs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each reference's seeded timm weights as a .safetensors file, through the converter's CLI."""
    out = {}
    folder = tmp_path_factory.mktemp("converted")
    for stem, num_classes, seed in REFERENCES:
        source, path = folder / f"{stem}.safetensors", folder / f"{stem}.ckpt"
        save_file(seeded_state(num_classes, seed), str(source))
        result = subprocess.run(
            [sys.executable, "-m", "src.convert_weights", "--input", str(source), "--output", str(path)],
            capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        out[stem] = path
    return out


@pytest.mark.parametrize("path", ["framework", "fast_cpu", "fast_cpu_folded"])
@pytest.mark.parametrize("stem, num_classes, seed", REFERENCES)
def test_converted_weights_reproduce_timm_outputs(converted, stem, num_classes, seed, path):
    net = create_network("ghostnet", num_classes=num_classes, fast_cpu=path != "framework")
    load_strict(net, str(converted[stem]))
    net.set_train(False)
    if path == "fast_cpu_folded":  # what eval.py runs for a float checkpoint
        fold_batchnorm_for_inference(net)
    logits, features = stored_outputs(stem, num_classes, seed)
    x = ms.Tensor(seeded_input())
    assert np.abs(net(x).asnumpy() - logits).max() < 1e-4
    ours = net.forward_features(x).asnumpy()[:, ::FEATURE_CHANNEL_STEP]
    assert np.abs(ours - features).max() < 2e-4


@pytest.mark.parametrize("timm_name, ours", [
    ("bn1.running_var", "bn1.moving_variance"),
    ("blocks.0.0.ghost1.primary_conv.1.weight", "blocks.0.ghost1.primary_conv.bn.gamma"),
    ("blocks.3.0.conv_dw.weight", "blocks.3.dw.conv.weight"),
    ("blocks.3.0.bn_dw.bias", "blocks.3.dw.bn.beta"),
    ("blocks.6.4.shortcut.3.running_mean", "blocks.10.shortcut.1.bn.moving_mean"),
    ("blocks.8.3.se.conv_expand.bias", "blocks.15.se.conv_expand.bias"),
    ("blocks.9.0.bn1.weight", "blocks.16.bn.gamma"),
    ("classifier.weight", "classifier.weight"),
])
def test_timm_names_map_to_zoo_names(timm_name, ours):
    assert timm_to_zoo_name(timm_name) == ours


def _state():
    return seeded_state(37, seed=2)


def test_converter_names_an_unused_source_tensor():
    state = _state()
    state["blocks.0.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"no place in the network: blocks\.0\.0\.extra\.weight"):
        convert(state, GhostNet(num_classes=37))


def test_converter_names_an_unfilled_parameter():
    state = _state()
    del state["blocks.3.0.bn_dw.running_var"]
    with pytest.raises(ValueError, match=r"no source tensor: blocks\.3\.dw\.bn\.moving_variance"):
        convert(state, GhostNet(num_classes=37))


def test_converter_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"classifier\.weight \(37, 1280\) vs network \(10, 1280\)"):
        convert(_state(), GhostNet(num_classes=10))


def test_converter_cli_exits_non_zero_and_writes_nothing(tmp_path):
    state = _state()
    del state["conv_stem.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    out = tmp_path / "out.ckpt"
    result = subprocess.run([sys.executable, "-m", "src.convert_weights", "--input", str(bad),
                             "--output", str(out)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "conv_stem.weight" in result.stderr
    assert not out.exists()


def test_converter_names_a_missing_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "src.convert_weights", "--input",
                             str(tmp_path / "none.safetensors"), "--output", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "input not found" in result.stderr


def test_a_pth_file_without_torch_gets_a_clear_message(tmp_path, monkeypatch):
    from src.convert_weights import read_state_dict

    path = tmp_path / "ghostnet_100.pth"
    path.write_bytes(b"\x80\x02}q\x00.")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if not installed
    with pytest.raises(RuntimeError, match=r"torch is not installed.*\.safetensors"):
        read_state_dict(str(path))


# --- strict loading -------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_params():
    return {name: p.asnumpy() for name, p in GhostNet(num_classes=37).parameters_and_names()}


def test_strict_load_round_trips_every_parameter(tmp_path, reference_params):
    path = tmp_path / "ref.ckpt"
    save_params(reference_params, str(path))
    net = GhostNet(num_classes=37)
    report = load_strict(net, str(path))
    assert report.loaded == len(reference_params)
    for name, p in net.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), reference_params[name])


def test_strict_load_refuses_missing_parameters(reference_params):
    params = dict(reference_params)
    del params["blocks.5.ghost2.cheap_operation.bn.gamma"]
    with pytest.raises(CheckpointError, match=r"1 missing: blocks\.5\.ghost2\.cheap_operation\.bn\.gamma"):
        load_strict(GhostNet(num_classes=37), params)


def test_strict_load_refuses_unexpected_parameters(reference_params):
    params = dict(reference_params, **{"head.fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"1 unexpected: head\.fc\.weight"):
        load_strict(GhostNet(num_classes=37), params)


def test_strict_load_refuses_another_classifier_size(reference_params):
    with pytest.raises(CheckpointError, match=r"classifier\.weight \(37, 1280\) vs network \(5, 1280\)"):
        load_strict(GhostNet(num_classes=5), reference_params)


def test_partial_load_reinitialises_only_the_classifier(reference_params):
    net = GhostNet(num_classes=5)
    fresh = dict(net.parameters_and_names())["classifier.weight"].asnumpy().copy()
    report = load_strict(net, reference_params, allow_new_classifier=True)
    assert report.reinitialised == ["classifier.weight", "classifier.bias"]
    params = dict(net.parameters_and_names())
    np.testing.assert_array_equal(params["classifier.weight"].asnumpy(), fresh)
    np.testing.assert_array_equal(params["conv_stem.weight"].asnumpy(), reference_params["conv_stem.weight"])


def test_partial_load_still_refuses_a_missing_backbone_parameter(reference_params):
    params = dict(reference_params)
    del params["conv_head.bias"]
    with pytest.raises(CheckpointError, match=r"conv_head\.bias"):
        load_strict(GhostNet(num_classes=5), params, allow_new_classifier=True)


def test_training_state_is_set_aside(reference_params):
    params = dict(reference_params, **{"train_state.epoch": np.array([3], np.int32),
                                       "moments.conv_stem.weight": reference_params["conv_stem.weight"]})
    report = load_strict(GhostNet(num_classes=37), params)
    assert set(report.training_state) == {"train_state.epoch", "moments.conv_stem.weight"}


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        read_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(str(tmp_path / "absent.ckpt"))
