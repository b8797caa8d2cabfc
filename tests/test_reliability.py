"""Issue 12: no bad or half-written file is ever left behind, and every ordinary mistake ends in
one message with exit code 2. One test per case, each building its own bad input."""
import dataclasses
import re
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

from conftest import REPO, SMALL_NET, run
from src.checkpoint import CheckpointError, load_strict, read_checkpoint, save_params
from src.config import TrainConfig
from src.dataset import DatasetError, convert_pets, load_image, load_image_bytes
from src.ghostnet import GhostNet
from src.sample_data import make_sample_pets

NET = SMALL_NET
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


# 1 -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_1_non_finite_parameters_stop_training_and_no_reader_takes_them(sample_pets, checkpoint_4_classes,
                                                                        tmp_path, subprocess_env):
    from src.models import load_network
    from src.train_utils import CheckpointKeeper

    _, data, _ = sample_pets
    # at this rate the loss stays finite (about 1e34) while BatchNorm statistics overflow in epoch 2
    out = tmp_path / "diverged"
    result = run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord", "--output_dir", out,
                 "--epoch_size", 2, *NET, "--batch_size", 16, "--warmup_epochs", 1, "--lr", 1000,
                 "--num_workers", 1, "--log_every", 100)
    assert "parameters became non-finite in epoch" in error_line(result) or "loss became" in result.stderr
    assert not (out / "ghostnet-final.ckpt").exists()
    for checkpoint in out.glob("*.ckpt"):
        assert all(np.isfinite(v.asnumpy()).all() for v in ms.load_checkpoint(str(checkpoint)).values())

    bad = non_finite_copy(checkpoint_4_classes, tmp_path / "nan.ckpt")
    message = r"holds NaN or infinite values in 2 of \d+ tensors \(conv_stem.weight, bn1.moving_variance\)"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match=message):  # what eval.py, classify.py and export.py load through
        load_network(str(bad), width=0.5, num_classes=4)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 2 of"):
        load_strict(GhostNet(width=0.5, num_classes=4), ms.load_checkpoint(str(bad)))
    resumable = tmp_path / "run"  # the same, as an epoch checkpoint train.py --resume finds
    resumable.mkdir()
    state = {name: value.asnumpy() for name, value in ms.load_checkpoint(str(bad)).items()}
    state.update({"train_state.epoch": np.array([1], np.int32), "train_state.global_step": np.array([3], np.int32),
                  "train_state.best_top1": np.array([-1.0], np.float32)})
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in state.items()],
                       str(resumable / "ghostnet-epoch0001.ckpt"))
    assert CheckpointKeeper(str(resumable), 5).newest() == str(resumable / "ghostnet-epoch0001.ckpt")
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                          "--output_dir", resumable, "--resume", "--epoch_size", 2, *TRAIN))
    assert re.search(message, line), line
    with pytest.raises(CheckpointError, match=r"not writing .*again.ckpt: NaN or infinite values in 2 of"):
        save_params(ms.load_checkpoint(str(bad)), str(tmp_path / "again.ckpt"))
    assert not (tmp_path / "again.ckpt").exists()

    line = error_line(run(subprocess_env, "eval.py", "--dataset_path", data / "test.mindrecord",
                          "--checkpoint_path", bad, *NET))
    assert f"{bad} holds NaN or infinite values in 2 of" in line and "lower --lr" in line
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                          "--output_dir", tmp_path / "ft", "--pretrained", bad, *TRAIN))
    assert f"{bad} holds NaN or infinite values" in line
    assert not list((tmp_path / "ft").glob("*.ckpt"))


def test_1_the_parameter_check_names_non_finite_parameters_and_moments():
    from src.errors import TrainingDiverged
    from src.train_utils import build_optimizer, check_parameters_finite

    net = GhostNet(width=0.5, num_classes=4)
    optimizer = build_optimizer(net, np.full(2, 0.1, np.float32), 0.9, 4e-5, 1.0)
    check_parameters_finite(net, optimizer, 1)  # all finite: nothing raised
    variance = net.blocks[3].ghost1.primary_conv.bn.moving_variance
    variance.set_data(ms.Tensor(np.full(variance.shape, np.inf, np.float32)))
    with pytest.raises(TrainingDiverged, match=r"epoch 2: NaN or infinite values in 1 of \d+ tensors "
                                               r"\(blocks\.3\.ghost1\.primary_conv\.bn\.moving_variance\)"):
        check_parameters_finite(net, optimizer, 2)


# 2 -----------------------------------------------------------------------------------------

def test_2_an_output_folder_is_held_by_one_run(sample_pets, tmp_path, subprocess_env):
    from src.outputs import FolderLock

    root, data, _ = sample_pets
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(str(out)):
        line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                              "--output_dir", out, "--epoch_size", 1, *TRAIN))
        assert f"--output_dir {out} is in use by pid {os.getpid()} on " in line
        line = error_line(converter(subprocess_env, "--data_root", root, "--output_dir", out))
        assert f"--output_dir {out} is in use by pid {os.getpid()} on " in line
        assert sorted(os.listdir(out)) == [".lock"]
    assert os.listdir(out) == []

    # the lock of a killed run (its file stays, the kernel's lock does not) is taken over
    (out / ".lock").write_text("pid 999999999 on somewhere\n")
    result = converter(subprocess_env, "--data_root", root, "--output_dir", out)
    assert result.returncode == 0, result.stderr
    assert "taking over the lock of pid 999999999 on somewhere, which is no longer running" in result.stderr
    assert sorted(os.listdir(out)) == ["class_names.txt", "test.mindrecord", "test.mindrecord.db",
                                       "train.mindrecord", "train.mindrecord.db"]


# 3 -----------------------------------------------------------------------------------------

def test_3_sixteen_bit_and_float_grayscale_match_their_8_bit_twin(tmp_path):
    gray = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8) * 2  # 0..220, a gradient
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    twins = {"I;16": (Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
             "I": (Image.fromarray(gray.astype(np.int32) * 257, mode="I"), "TIFF"),
             "F": (Image.fromarray(gray.astype(np.float32) / 255, mode="F"), "TIFF")}
    expected_bytes, _ = load_image_bytes(str(tmp_path / "8bit.png"))
    expected_pixels = load_image(str(tmp_path / "8bit.png"), 32)
    for mode, (image, file_format) in twins.items():
        path = tmp_path / f"{mode.replace(';', '')}.{file_format.lower()}"
        image.save(path, file_format)
        assert Image.open(path).mode == mode
        data, reason = load_image_bytes(str(path))  # what the converter writes
        assert reason == f"{file_format} {mode}"
        assert data == expected_bytes, mode
        np.testing.assert_array_equal(load_image(str(path), 32), expected_pixels, err_msg=mode)  # classify.py


# 4 -----------------------------------------------------------------------------------------

def test_4_checkpoint_and_model_writes_are_atomic(checkpoint_4_classes, tmp_path, monkeypatch):
    import export

    def dies_half_way(entries, file_name, *args, **kwargs):
        with open(file_name, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    good = tmp_path / "good.ckpt"
    shutil.copy(checkpoint_4_classes, good)
    monkeypatch.setattr(ms, "save_checkpoint", dies_half_way)
    with pytest.raises(RuntimeError, match="disk full"):
        save_params({"w": np.ones(3, np.float32)}, str(tmp_path / "int8.ckpt"))
    with pytest.raises(RuntimeError, match="disk full"):
        save_params({"w": np.ones(3, np.float32)}, str(good))
    assert sorted(os.listdir(tmp_path)) == ["good.ckpt"]
    assert good.read_bytes() == checkpoint_4_classes.read_bytes()

    def export_dies_half_way(net, *inputs, file_name, file_format):
        dies_half_way(None, file_name if file_name.endswith(".mindir") else file_name + ".mindir")
    monkeypatch.setattr(ms, "export", export_dies_half_way)
    args = export.get_args_parser().parse_args(["--checkpoint_path", str(checkpoint_4_classes),
                                                "--file_format", "MINDIR", *NET])
    with pytest.raises(ValueError, match="could not export the float network to MINDIR: disk full"):
        export.export_with_mindspore(args, str(tmp_path / "net.mindir"))
    assert sorted(os.listdir(tmp_path)) == ["good.ckpt"]


# 5 -----------------------------------------------------------------------------------------

def test_5_staging_folders_of_killed_conversions_are_removed(tmp_path, caplog):
    root = tiny_pets(tmp_path / "pets")
    out = tmp_path / "out"
    stale = out / ".staging-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "train.mindrecord").write_bytes(b"\0" * 1000)
    with caplog.at_level("INFO"):
        convert_pets(str(root), str(out))
    assert f"removing {stale}, left by a conversion that did not finish" in caplog.text
    assert not [name for name in os.listdir(out) if name.startswith(".")]
    assert (out / "train.mindrecord").exists()


# 6 -----------------------------------------------------------------------------------------

def test_6_labels_beyond_num_classes_are_found_without_class_names(sample_pets, tmp_path, subprocess_env):
    _, data, _ = sample_pets
    bare = tmp_path / "bare"  # the MindRecord without the class_names.txt beside it
    bare.mkdir()
    for name in ("train.mindrecord", "train.mindrecord.db"):
        shutil.copy(data / name, bare / name)
    result = run(subprocess_env, "train.py", "--dataset_path", bare / "train.mindrecord", "--output_dir",
                 tmp_path / "out", "--epoch_size", 1, *[a if a != "4" else "3" for a in TRAIN])
    line = error_line(result)
    assert (f"{bare / 'train.mindrecord'} has labels up to 3 (4 classes) but --num_classes is 3; "
            "pass --num_classes 4") in line
    assert not (tmp_path / "out").exists()  # nothing left, not even the folder the run made


# 7 -----------------------------------------------------------------------------------------

def test_7_resume_refuses_a_changed_schedule(sample_pets, checkpoint_4_classes, tmp_path, subprocess_env):
    _, data, _ = sample_pets
    saved = TrainConfig(width=0.5, num_classes=4, image_size=32, batch_size=8, epoch_size=2, warmup_epochs=1,
                        lr=0.8, num_workers=1, log_every=100)
    config_json = json.dumps(dict(dataclasses.asdict(saved), workers=1, pretrained=None, quant=False,
                                  dataset_path=str(data / "train.mindrecord")), indent=2)
    (tmp_path / "config.json").write_text(config_json)
    shutil.copy(checkpoint_4_classes, tmp_path / "ghostnet-epoch0001.ckpt")
    changed = [a if a != "8" else "16" for a in TRAIN] + ["--lr_schedule", "step", "--num_workers", 2]
    result = run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord", "--output_dir",
                 tmp_path, "--resume", "--epoch_size", 3, *changed)
    line = error_line(result)
    assert (f"--resume with another configuration than {tmp_path / 'config.json'}: batch_size 8 -> 16, "
            "epoch_size 2 -> 3, lr_schedule cosine -> step.") in line
    assert "num_workers" not in line  # does not change the run
    assert (tmp_path / "config.json").read_text() == config_json
    assert sorted(os.listdir(tmp_path)) == ["config.json", "ghostnet-epoch0001.ckpt"]


def test_7_resuming_an_int8_run_from_before_range_freezing_keeps_its_ranges_moving(tmp_path):
    """A --quant run's config.json written before --quant_observer_freeze_epoch existed: its
    ranges followed the data to the end, so the new default (freeze after 4) is a change."""
    from src.config import check_resume_config
    from src.errors import ConfigError

    saved = dataclasses.asdict(TrainConfig(epoch_size=10))
    del saved["quant_observer_freeze_epoch"]
    (tmp_path / "config.json").write_text(json.dumps(dict(saved, workers=1, quant=True)))
    with pytest.raises(ConfigError, match="quant_observer_freeze_epoch 10 -> 4"):
        check_resume_config(str(tmp_path / "config.json"), TrainConfig(epoch_size=10), 1)
    check_resume_config(str(tmp_path / "config.json"), TrainConfig(epoch_size=10, quant_observer_freeze_epoch=10), 1)
    (tmp_path / "config.json").write_text(json.dumps(dict(saved, workers=1, quant=False)))
    check_resume_config(str(tmp_path / "config.json"), TrainConfig(epoch_size=10), 1)  # float: no ranges


# 8 -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_8_an_output_path_through_a_file_gets_a_message(sample_pets, checkpoint_4_classes, tmp_path,
                                                        subprocess_env):
    root, data, _ = sample_pets
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    line = error_line(converter(subprocess_env, "--data_root", root, "--output_dir", blocker / "mr"))
    assert f"--output_dir {blocker / 'mr'}: {blocker} is a file, not a folder" in line
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                          "--output_dir", blocker / "run" / "a", "--epoch_size", 1, *TRAIN))
    assert f"--output_dir {blocker / 'run' / 'a'}: {blocker} is a file, not a folder" in line
    line = error_line(run(subprocess_env, "export.py", "--checkpoint_path", checkpoint_4_classes,
                          "--file_format", "MINDIR", "--file_name", blocker / "net", *NET))
    assert f"--file_name {blocker / 'net'}: {blocker} is a file, not a folder" in line
    assert os.listdir(tmp_path) == ["notes.txt"] and blocker.read_text() == "a file, not a folder"


# 9 -----------------------------------------------------------------------------------------

def test_9_annotations_without_images_are_an_error(tmp_path, subprocess_env):
    root = tiny_pets(tmp_path / "pets")
    header = "#Image CLASS-ID SPECIES BREED ID\n"
    test_lines = (root / "annotations" / "test.txt").read_text()
    for name in ("trainval.txt", "test.txt"):
        (root / "annotations" / name).write_text(header)
    line = error_line(converter(subprocess_env, "--data_root", root, "--output_dir", tmp_path / "out"))
    assert "list no images (only comments or blank lines)" in line and "trainval.txt" in line

    (root / "annotations" / "test.txt").write_text(header + test_lines)
    line = error_line(converter(subprocess_env, "--data_root", root, "--output_dir", tmp_path / "out"))
    assert (f"the train split would hold no images ({root / 'annotations' / 'trainval.txt'} lists 0, "
            "0 skipped)") in line
    assert not (tmp_path / "out").exists()  # nothing left, not even the folder the run made


# 10 ----------------------------------------------------------------------------------------

def png_declaring(path, width, height):
    """A black 1-bit PNG of width x height: a few kB on disk whatever size it declares."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the row's bits
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_10_huge_images_are_skipped_and_named(tmp_path):
    assert Image.MAX_IMAGE_PIXELS == 89478485  # PIL's default: no lower limit set for this test
    root = tiny_pets(tmp_path / "pets")
    over_error = png_declaring(root / "images" / "Abyssinian_900.jpg", 15000, 15000)  # PIL raises
    over_warning = png_declaring(root / "images" / "Abyssinian_901.jpg", 10000, 10000)  # PIL warns
    assert over_error.stat().st_size < 100_000
    with open(root / "annotations" / "test.txt", "a", encoding="utf-8") as f:
        f.write("Abyssinian_900 1 1 1\nAbyssinian_901 1 1 1\n")
    summaries = convert_pets(str(root), str(tmp_path / "out"))
    skipped = dict(summaries["test"].skipped)
    assert set(skipped) == {str(over_error), str(over_warning)}
    assert "225000000 pixels" in skipped[str(over_error)] and "exceeds limit" in skipped[str(over_error)]
    assert "100000000 pixels" in skipped[str(over_warning)]
    assert summaries["test"].written == 2
    with pytest.raises(DatasetError, match=rf"{over_error} is not an image file PIL can read .*225000000 pixels"):
        load_image(str(over_error), 32)  # classify.py's image loading


# 11 ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_11_sizes_of_zero_and_nan_rates_are_refused_by_name(sample_pets, checkpoint_4_classes, tmp_path,
                                                            subprocess_env):
    from src.train_utils import build_optimizer, resume_from

    _, data, _ = sample_pets
    line = error_line(run(subprocess_env, "eval.py", "--dataset_path", data / "test.mindrecord",
                          "--checkpoint_path", checkpoint_4_classes, "--image_size", 0, "--batch_size", 0))
    assert "--batch_size must be at least 1, got 0; --image_size must be at least 1, got 0" in line
    line = error_line(run(subprocess_env, "export.py", "--checkpoint_path", checkpoint_4_classes,
                          "--file_format", "MINDIR", "--file_name", tmp_path / "net", "--batch_size", 0))
    assert "--batch_size must be at least 1, got 0" in line
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                          "--output_dir", tmp_path / "run", *TRAIN, "--lr", "nan", "--lr_end", "inf"))
    assert "--lr must be a finite number, got nan; --lr_end must be a finite number, got inf" in line
    assert os.listdir(tmp_path) == []

    # a checkpoint without momentum cannot be resumed: a CheckpointError, which train.py reports
    net = GhostNet(width=0.5, num_classes=4)
    optimizer = build_optimizer(net, np.full(4, 0.1, np.float32), 0.9, 4e-5, 1.0)
    with pytest.raises(CheckpointError, match=r"has no optimizer state \(\d+ momentum tensors missing, first "):
        resume_from(str(checkpoint_4_classes), net, optimizer)


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


# 13 ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_13_classify_names_every_bad_file_and_classifies_the_rest(checkpoint_4_classes, tmp_path,
                                                                   subprocess_env):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(pictures / name)
    (pictures / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (pictures / "readme.txt").write_text("not a picture, and not named like one")
    absent = tmp_path / "absent.png"
    result = run(subprocess_env, "classify.py", "--checkpoint_path", checkpoint_4_classes, *NET, "--top_k", 2,
                 absent, pictures)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 2
    assert f"image not found: {absent}" in errors[0]
    assert f"{pictures / 'broken.jpg'} is not an image file PIL can read" in errors[1]
    classified = [line for line in result.stdout.splitlines() if not line.startswith("  ")]
    assert classified == [str(pictures / "a.jpg"), str(pictures / "b.png")]
    assert len(result.stdout.splitlines()) == 2 * 3

    line = error_line(run(subprocess_env, "classify.py", "--checkpoint_path", checkpoint_4_classes, *NET,
                          "--top_k", 0, pictures / "a.jpg"))
    assert "--top_k must be at least 1, got 0" in line


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
