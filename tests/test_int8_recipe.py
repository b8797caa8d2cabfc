"""The int8 recipe end to end on a small learnable set of real JPEGs through the real pipeline."""
import importlib.util
import os
import re

import numpy as np
import pytest

from conftest import REPO, SMALL, run
from src.checkpoint import load_strict, read_checkpoint


def accuracy(result):
    assert result.returncode == 0, result.stderr
    match = re.search(r"^result: \{'acc': (\d\.\d{4})\} ckpt= ", result.stdout, re.M)
    samples = int(re.search(r"samples: (\d+)", result.stdout).group(1))
    assert samples == 100
    return float(match.group(1))


@pytest.fixture
def recipe(int8_recipe):
    return int8_recipe


def evaluate(recipe, checkpoint, *extra):
    root, env = recipe
    return run(env, "eval.py", "--dataset_path", root / "data" / "test.mindrecord", "--checkpoint_path",
               root / checkpoint, "--width", 0.5, "--num_classes", 4, "--image_size", 32, *extra)


@pytest.mark.slow
def test_int8_accuracy_stays_close_to_float(recipe):
    float_top1 = accuracy(evaluate(recipe, "float/ghostnet-final.ckpt"))
    assert float_top1 >= 0.8  # the float model learned the set (chance is 0.25)
    without_finetune = accuracy(evaluate(recipe, "ptq/ghostnet-int8.ckpt", "--quant"))
    with_finetune = accuracy(evaluate(recipe, "qat/ghostnet-int8.ckpt"))
    assert without_finetune >= float_top1 - 0.02
    assert with_finetune >= float_top1 - 0.01


@pytest.mark.slow
def test_fine_tuning_moves_statistics_and_ranges_until_their_freeze_epoch_only(recipe):
    """The recipe fine-tunes two epochs with --quant_bn_freeze_epoch 1 and
    --quant_observer_freeze_epoch 1: the first moves the BatchNorm moving statistics and the
    activation ranges; the second, a training step compiled with both frozen, leaves them."""
    root, _ = recipe

    def values(path, suffixes):
        return {name: p.asnumpy() for name, p in read_checkpoint(str(path)).items() if name.endswith(suffixes)}

    def moved(before, after):
        assert before.keys() == after.keys()
        return [not np.array_equal(before[name], after[name]) for name in before]

    def statistics(path):  # in order: the float and fake-quant networks name them differently
        return list(values(path, ("moving_mean", "moving_variance")).values())

    start = statistics(root / "float" / "ghostnet-final.ckpt")  # fine-tuning starts from these
    first, second = (statistics(root / "qat" / f"ghostnet-epoch{epoch:04d}.ckpt") for epoch in (1, 2))
    assert len(start) == len(first) == len(second) == 160
    assert [a.shape for a in start] == [a.shape for a in first]  # the same BatchNorms, in the same order
    assert all(not np.array_equal(before, after) for before, after in zip(start, first))
    assert all(np.array_equal(before, after) for before, after in zip(first, second))

    # output ranges as calibrated (the int8 checkpoint before fine-tuning), after each epoch
    calibrated = values(root / "qat" / "ghostnet-int8-calibrated.ckpt", ("output_min", "output_max"))
    first, second = ({name.replace("output_range.act_", "output_"): value for name, value in
                      values(root / "qat" / f"ghostnet-epoch{epoch:04d}.ckpt", ("output_range.act_min",
                                                                                 "output_range.act_max")).items()}
                     for epoch in (1, 2))
    assert len(calibrated) == 2 * 95
    assert all(moved(calibrated, first)) and not any(moved(first, second))
    inputs = [values(root / "qat" / f"ghostnet-epoch{epoch:04d}.ckpt", ("input_quant.act_min", "input_quant.act_max"))
              for epoch in (1, 2)]
    assert inputs[0] and not any(moved(*inputs))


@pytest.mark.slow
def test_int8_checkpoint_holds_integers_at_a_quarter_of_the_size(recipe):
    root, _ = recipe
    params = read_checkpoint(str(root / "qat" / "ghostnet-int8.ckpt"))
    weights = [p for name, p in params.items() if name.endswith(".weight")]
    assert len(weights) == 96 and all(str(w.dtype) == "Int8" for w in weights)
    # the float file also carries momentum: compare with the network's float parameters alone
    float_net_bytes = sum(p.asnumpy().nbytes for n, p in read_checkpoint(str(root / "float" / "ghostnet-final.ckpt")).items()
                          if not n.startswith(("moments.", "train_state.")))
    assert os.path.getsize(root / "qat" / "ghostnet-int8.ckpt") < 0.3 * float_net_bytes


@pytest.mark.slow
def test_float_and_int8_checkpoints_are_not_mixed_up(recipe):
    result = evaluate(recipe, "float/ghostnet-final.ckpt", "--quant")
    assert result.returncode == 2
    assert "is a float checkpoint; --quant expects an int8 checkpoint" in result.stderr
    root, env = recipe
    result = run(env, "train.py", "--dataset_path", root / "data" / "train.mindrecord", *SMALL,
                 "--output_dir", root / "mixup", "--epoch_size", 1, "--pretrained", root / "qat" / "ghostnet-int8.ckpt")
    assert result.returncode == 2
    assert "is an int8 checkpoint; --pretrained takes a float checkpoint" in result.stderr


@pytest.mark.slow
def test_the_hub_builds_networks_that_load_train_py_checkpoints(recipe, tmp_path, monkeypatch):
    root, _ = recipe
    monkeypatch.chdir(tmp_path)  # the hub imports the file by path from elsewhere
    spec = importlib.util.spec_from_file_location("hub_conf", REPO / "mindspore_hub_conf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    float_net = hub.create_network("ghostnet", width=0.5, num_classes=4)
    assert load_strict(float_net, str(root / "float" / "ghostnet-final.ckpt")).loaded == 432
    int8_net = hub.create_network("ghostnet_int8", width=0.5, num_classes=4)
    # convolutions also hold their output range; the 11 that read a ghost module directly share its input quantization
    assert load_strict(int8_net, str(root / "qat" / "ghostnet-int8.ckpt")).loaded == 95 * 7 + 5 - 11 * 2
