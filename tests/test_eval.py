import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from mindspore.mindrecord import FileWriter

from conftest import REPO
from src.checkpoint import load_strict
from src.dataset import create_dataset
from src.evaluation import evaluate
from src.ghostnet import GhostNet


def run_eval(env, *args):
    return subprocess.run([sys.executable, str(REPO / "eval.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.slow
def test_eval_script_reports_every_sample_and_the_same_accuracy(sample_pets, checkpoint_4_classes,
                                                                subprocess_env, tmp_path):
    _, out, _ = sample_pets
    report_dir = tmp_path / "report"
    result = run_eval(subprocess_env, "--dataset_path", out / "test.mindrecord",
                      "--checkpoint_path", checkpoint_4_classes, "--batch_size", 5,
                      "--image_size", 48, "--num_classes", 4, "--width", 0.5, "--platform", "CPU",
                      "--report_dir", report_dir)
    assert result.returncode == 0, result.stderr
    line = re.search(r"^result: \{'acc': (\d\.\d{4})\} ckpt= (.+)$", result.stdout, re.M)
    assert line and line.group(2) == str(checkpoint_4_classes)
    top5 = re.search(r"^top5: (\d\.\d{4}) samples: (\d+)$", result.stdout, re.M)
    assert int(top5.group(2)) == 23
    assert float(top5.group(1)) == 1.0  # 4 classes: the true one is always in the top 5

    net = GhostNet(width=0.5, num_classes=4)
    load_strict(net, str(checkpoint_4_classes))
    expected = evaluate(net, create_dataset(str(out / "test.mindrecord"), train=False,
                                            image_size=48, batch_size=23))
    assert float(line.group(1)) == pytest.approx(expected["top1"], abs=1e-4)

    # --report_dir: per-class accuracy and the confusion matrix, with the breed names
    report = json.loads((report_dir / "eval_report.json").read_text())
    confusion = np.array(report["confusion"])
    np.testing.assert_array_equal(confusion, expected["confusion"])
    assert confusion.sum() == 23 and np.trace(confusion) / 23 == pytest.approx(report["top1"])
    assert report["class_names"] == (out / "class_names.txt").read_text().split()
    assert [c["samples"] for c in report["classes"]] == [6, 6, 6, 5]  # as the labels count them
    assert f"confusion matrix: {report_dir / 'confusion.png'}" in result.stdout
    with Image.open(report_dir / "confusion.png") as picture:
        assert picture.format == "PNG" and min(picture.size) > 300


def test_eval_refuses_a_checkpoint_that_does_not_fit(sample_pets, checkpoint_4_classes, subprocess_env):
    _, out, _ = sample_pets
    result = run_eval(subprocess_env, "--dataset_path", out / "test.mindrecord",
                      "--checkpoint_path", checkpoint_4_classes, "--width", 0.5)
    assert result.returncode == 2
    assert "classifier.weight (4, 1280) vs network (37, 1280)" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_names_missing_files(checkpoint_4_classes, tmp_path, subprocess_env):
    result = run_eval(subprocess_env, "--dataset_path", tmp_path / "test.mindrecord",
                      "--checkpoint_path", checkpoint_4_classes)
    assert result.returncode == 2
    assert f"dataset not found: {tmp_path / 'test.mindrecord'}" in result.stderr


def test_eval_names_a_corrupt_image_inside_the_mindrecord(tmp_path, checkpoint_4_classes, subprocess_env):
    path = tmp_path / "broken.mindrecord"
    writer = FileWriter(str(path), 1)
    writer.add_schema({"image": {"type": "bytes"}, "label": {"type": "int32"}}, "x")
    writer.write_raw_data([{"image": b"\xff\xd8 not a jpeg", "label": 0}])
    writer.commit()
    result = run_eval(subprocess_env, "--dataset_path", path, "--checkpoint_path", checkpoint_4_classes,
                      "--num_classes", 4, "--width", 0.5, "--image_size", 32)
    assert result.returncode == 2
    assert f"an image inside {path} cannot be decoded" in result.stderr
    assert "--overwrite" in result.stderr


def test_an_unusable_device_gets_a_message_not_a_traceback(sample_pets, checkpoint_4_classes, subprocess_env):
    _, out, _ = sample_pets
    result = run_eval(subprocess_env, "--dataset_path", out / "test.mindrecord", "--checkpoint_path",
                      checkpoint_4_classes, "--num_classes", 4, "--width", 0.5, "--image_size", 32,
                      "--device_target", "Ascend")
    if result.returncode == 0:
        pytest.skip("this machine has an Ascend device")
    assert result.returncode == 2
    assert "MindSpore cannot run on Ascend here" in result.stderr
    assert "--device_target CPU" in result.stderr and "Traceback" not in result.stderr


def test_loading_a_checkpoint_prints_no_warning_per_parameter(checkpoint_4_classes, subprocess_env):
    """MindSpore 2.10 warns on every call of its deprecated dtype helpers: loading a
    checkpoint through one printed a line per parameter (648 for an int8 network)."""
    code = ("import sys; from src.checkpoint import load_strict; from src.ghostnet import GhostNet; "
            "load_strict(GhostNet(width=0.5, num_classes=4), sys.argv[1])")
    result = subprocess.run([sys.executable, "-c", code, str(checkpoint_4_classes)], capture_output=True, text=True,
                            env=dict(subprocess_env, GLOG_v="2"), cwd=REPO)  # MindSpore's warnings shown
    assert result.returncode == 0, result.stderr
    assert "deprecated" not in result.stderr and len(result.stderr.splitlines()) < 5, result.stderr[-2000:]
