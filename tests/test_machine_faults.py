"""Faults of the machine: a full disk, a read-only folder. Each write ends in one line naming
the path and the cause (exit code 2), leaves no temporary file, and keeps what was complete.

The full disk is a small tmpfs mounted for the test (root and mount(8) needed, as on CI; the
test is skipped where the mount is refused); the fake writers need nothing."""
import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SMALL_NET, run
from src.checkpoint import save_params
from src.cli import run_script
from src.errors import OutputError
from src.outputs import write_atomically

TRAIN = SMALL_NET + ["--batch_size", "8", "--warmup_epochs", "1", "--lr", "0.8", "--num_workers", "1",
                     "--log_every", "100"]


def error_line(result):
    """The one ERROR line of a script that failed with exit code 2 (and no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # our lines only: MindSpore's data workers log their own "[ERROR] MD(...)" line before ours
    errors = [line for line in result.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ERROR ", line)]
    assert len(errors) == 1, result.stderr
    return errors[0]


class Tmpfs:
    def __init__(self, path):
        self.path = path

    def mount(self, size, read_only=False):
        options = f"size={size}" + (",ro" if read_only else "")
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)]
        if os.path.ismount(self.path):
            command = ["mount", "-o", f"remount,{options if read_only else options + ',rw'}", str(self.path)]
        subprocess.run(command, check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    disk = Tmpfs(path)
    try:
        disk.mount("1m")
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err})")
    yield disk
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def leftovers(folder):
    return [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def test_a_writer_that_fills_the_disk_leaves_no_temporary_file_whatever_its_name(tmp_path):
    target = tmp_path / "model.ckpt"
    target.write_bytes(b"the previous complete file")

    def fills_the_disk(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        with open(os.path.splitext(tmp)[0] + ".tmp", "wb") as f:  # as MindSpore's own writer names it
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=rf"cannot write {target}: no space left on the device: "
                                          r"[\d.]+ MB free in .*, about 4\.0 MB needed; free some space"):
        write_atomically(str(target), fills_the_disk, needed=4 * 2**20)
    assert os.listdir(tmp_path) == ["model.ckpt"] and target.read_bytes() == b"the previous complete file"

    def read_only(tmp):
        raise OSError(errno.EROFS, "Read-only file system", tmp)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'x.json'}: a read-only file system"):
        write_atomically(str(tmp_path / "x.json"), read_only)


def test_a_write_no_writer_wrapped_is_one_line_too(tmp_path, capsys):
    def main(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "logs" / "worker_0.log"))
    parser = __import__("argparse").ArgumentParser()
    with pytest.raises(SystemExit) as exit_info:
        run_script(main, parser, __import__("logging").getLogger("t"), argv=[])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()  # run_script logs to stderr, as the scripts do
    assert len(lines) == 1
    assert lines[0].endswith(f"ERROR {tmp_path / 'logs' / 'worker_0.log'}: permission denied")


def test_a_full_disk_during_training_keeps_the_last_checkpoint_and_resume_continues(
        sample_pets, tmpfs, subprocess_env):
    """The first epoch's checkpoint (10.6 MB) fits, the second's does not; once there is room,
    --resume finishes the run."""
    _, data, _ = sample_pets
    tmpfs.mount("16m")
    out = tmpfs.path / "run"
    command = ["--dataset_path", data / "train.mindrecord", "--output_dir", out, "--epoch_size", 2, *TRAIN]
    line = error_line(run(subprocess_env, "train.py", *command))
    assert f"cannot write {out / 'ghostnet-epoch0002.ckpt'}: no space left on the device: " in line
    assert "MB needed" in line
    assert f"The last complete checkpoint, {out / 'ghostnet-epoch0001.ckpt'}, is kept" in line
    assert "--resume" in line
    assert leftovers(out) == [] and "ghostnet-epoch0001.ckpt" in os.listdir(out)

    tmpfs.mount("64m")
    resumed = run(subprocess_env, "train.py", *command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and (out / "ghostnet-final.ckpt").is_file()
    assert leftovers(out) == []


@pytest.mark.slow
def test_a_full_disk_in_export_and_conversion_is_one_line_and_leaves_nothing(
        sample_pets, checkpoint_4_classes, tmpfs, subprocess_env):
    root, _, _ = sample_pets
    tmpfs.mount("300k")
    for file_format in ("ONNX", "MINDIR"):
        line = error_line(run(subprocess_env, "export.py", "--checkpoint_path", checkpoint_4_classes,
                              "--file_format", file_format, "--file_name", tmpfs.path / "models" / "ghostnet",
                              *SMALL_NET))
        assert f"cannot write {tmpfs.path / 'models' / 'ghostnet'}.{file_format.lower()}: no space left" in line
        assert os.listdir(tmpfs.path) == []  # not even the folder it made
    result = subprocess.run([sys.executable, "-m", "src.dataset", "--data_root", root, "--output_dir",
                             tmpfs.path / "mindrecord"], capture_output=True, text=True, env=subprocess_env,
                            cwd=REPO)
    line = error_line(result)
    assert f"cannot write the MindRecord files in {tmpfs.path / 'mindrecord'}: no space left" in line
    assert "Nothing was written" in line and os.listdir(tmpfs.path) == []


@pytest.mark.slow
def test_a_read_only_folder_is_named_in_one_line(sample_pets, checkpoint_4_classes, tmpfs, subprocess_env):
    root, data, _ = sample_pets
    (tmpfs.path / "existing").mkdir()
    tmpfs.mount("1m", read_only=True)
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", data / "train.mindrecord",
                          "--output_dir", tmpfs.path / "existing", "--epoch_size", 1, *TRAIN))
    assert f"--output_dir {tmpfs.path / 'existing'}: cannot write there (a read-only file system)" in line
    line = error_line(run(subprocess_env, "export.py", "--checkpoint_path", checkpoint_4_classes,
                          "--file_format", "ONNX", "--file_name", tmpfs.path / "existing" / "g", *SMALL_NET))
    assert f"cannot write {tmpfs.path / 'existing' / 'g.onnx'}: a read-only file system" in line
    result = subprocess.run([sys.executable, "-m", "src.dataset", "--data_root", root, "--output_dir",
                             tmpfs.path / "new"], capture_output=True, text=True, env=subprocess_env, cwd=REPO)
    assert f"cannot create the folder {tmpfs.path / 'new'} (a read-only file system)" in error_line(result)


def test_save_params_on_a_full_disk_names_the_size_and_keeps_nothing(tmp_path, monkeypatch):
    import mindspore as ms

    def mindspore_writer_fills_the_disk(entries, file_name, *args, **kwargs):
        with open(os.path.splitext(file_name)[0] + ".tmp", "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ms, "save_checkpoint", mindspore_writer_fills_the_disk)
    with pytest.raises(OutputError, match=r"about 4\.0 MB needed"):
        save_params({"w": np.ones(2**20, np.float32)}, str(tmp_path / "a.ckpt"))
    assert os.listdir(tmp_path) == []
    shutil.rmtree(tmp_path)


def mindrecord_with_a_corrupt_image(path, good_rows):
    """``good_rows`` with one image's JPEG data cut after its first bytes and random bytes put
    after them."""
    from mindspore.mindrecord import FileWriter

    rows = [dict(row) for row in good_rows]
    rows[3]["image"] = rows[3]["image"][:20] + np.random.default_rng(0).bytes(4096)
    writer = FileWriter(str(path), 1)
    writer.add_schema({"image": {"type": "bytes"}, "label": {"type": "int32"}}, "x")
    writer.write_raw_data(rows)
    writer.commit()
    return path


@pytest.mark.slow
def test_damaged_data_ends_training_in_one_line_and_leaves_nothing(sample_pets, tmp_path, subprocess_env):
    from mindspore.mindrecord import FileReader

    _, data, _ = sample_pets
    reader = FileReader(str(data / "train.mindrecord"))
    rows = [{"image": r["image"], "label": int(r["label"])} for r in reader.get_next()]
    reader.close()
    (tmp_path / "broken").mkdir()
    broken = mindrecord_with_a_corrupt_image(tmp_path / "broken" / "train.mindrecord", rows)
    out = tmp_path / "run"
    line = error_line(run(subprocess_env, "train.py", "--dataset_path", broken, "--output_dir", out,
                          "--epoch_size", 1, *TRAIN))
    assert f"an image inside {broken} cannot be decoded" in line and "--overwrite" in line
    assert not out.exists()  # no config.json, no folder: the run wrote no checkpoint

    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("train.mindrecord", "train.mindrecord.db"):
        shutil.copy(data / name, cut / name)
    with open(cut / "train.mindrecord", "r+b") as f:
        f.truncate(os.path.getsize(cut / "train.mindrecord") // 2)
    for script, flags in (("train.py", ["--output_dir", out, "--epoch_size", 1, *TRAIN]),
                          ("eval.py", ["--checkpoint_path", tmp_path / "none.ckpt", *SMALL_NET])):
        line = error_line(run(subprocess_env, script, "--dataset_path", cut / "train.mindrecord", *flags))
        assert f"{cut / 'train.mindrecord'} is not a readable MindRecord file (Failed to read file)" in line, script
        assert "python -m src.dataset" in line and "Refer to" not in line
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_writes_where_it_is_and_resume_goes_on_from_that_step(
        sample_pets, tmp_path, subprocess_env):
    import json
    import shlex
    import signal
    import time

    from src.checkpoint import read_checkpoint

    _, data, _ = sample_pets
    common = ["--dataset_path", data / "train.mindrecord", "--epoch_size", 3, *TRAIN]
    full = run(subprocess_env, "train.py", *common, "--output_dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr

    out = tmp_path / "stopped"
    process = run(subprocess_env, "train.py", *common, "--output_dir", out, wait=False)
    deadline = time.time() + 300
    while not (out / "ghostnet-epoch0001.ckpt").exists():
        assert process.poll() is None and time.time() < deadline, process.stdout.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    line = re.search(r"ERROR SIGTERM: stopped at epoch (\d), step (\d); wrote (\S+)\. Continue with: (.+)$",
                     output, re.M)
    assert line, output
    epoch, step, path = int(line.group(1)), int(line.group(2)), line.group(3)
    assert epoch >= 2 and 1 <= step < 6  # 6 steps an epoch: stopped inside one
    assert path == str(out / f"ghostnet-epoch{epoch:04d}-step{step:05d}.ckpt")
    state = read_checkpoint(path)
    assert int(state["train_state.epoch_step"].asnumpy()[0]) == step
    assert int(state["train_state.global_step"].asnumpy()[0]) == (epoch - 1) * 6 + step
    assert leftovers(out) == [] and not (out / "ghostnet-final.ckpt").exists()

    command = shlex.split(line.group(4))
    assert command[:2] == ["python", "train.py"] and command[-1] == "--resume"
    resumed = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                             env=subprocess_env, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {step} of epoch {epoch})" in resumed.stderr
    assert f"epoch {epoch} step 1/" not in resumed.stderr  # the epoch's first steps are not run again
    for key in ("epoch", "global_step"):
        assert (read_checkpoint(str(out / "ghostnet-final.ckpt"))[f"train_state.{key}"].asnumpy()
                == read_checkpoint(str(tmp_path / "full" / "ghostnet-final.ckpt"))[f"train_state.{key}"].asnumpy())
    full_history, history = (json.loads((folder / "history.json").read_text())["epochs"]
                             for folder in (tmp_path / "full", out))
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert [e["lr"] for e in history] == [e["lr"] for e in full_history]
    # the same losses as the run never stopped: the epoch it stopped in and the ones after too
    assert [e["loss"] for e in history] == [e["loss"] for e in full_history]


def test_a_failed_distributed_run_names_the_worker_that_ended_first_and_keeps_earlier_logs(tmp_path):
    """The log lines as msrun and train.py write them (a worker killed with SIGKILL)."""
    import time

    from src.launch import archive_earlier_logs, describe_failure

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker_0.log").write_text("01:48:02 INFO [rank 0] worker process id 16763\n"
                                       "RuntimeError: The total number of timed out node is 1.\n")
    (logs / "worker_1.log").write_text("01:48:02 INFO [rank 1] worker process id 16764\n")
    (logs / "msrun.log").write_text(
        "[ERROR] ME(16457:1,MainProcess):2026-12-08-01:46:28 [_api.py:365] Worker process 16764 exit with "
        "exception. Error code: -9.\n[ERROR] ME(16457:1,MainProcess):2026-12-08-01:46:58 [_api.py:385] "
        "Scheduler process 16463 exit with exception.\n")
    assert describe_failure(str(logs)) == (
        f"worker rank 1 (process 16764) ended first, killed by SIGKILL; its log: {logs / 'worker_1.log'}. "
        f"The other workers stopped after it; all logs are in {logs}")

    stamp = time.mktime((2026, 12, 8, 1, 48, 40, 0, 0, -1))
    for log in logs.iterdir():
        os.utime(log, (stamp, stamp))
    archive = archive_earlier_logs(str(logs))
    assert archive == str(logs / "run-20261208-014840")
    assert sorted(os.listdir(logs)) == ["run-20261208-014840"]
    assert sorted(os.listdir(archive)) == ["msrun.log", "worker_0.log", "worker_1.log"]
    assert archive_earlier_logs(str(logs)) is None  # nothing new to move


def test_sigterm_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path, capsys):
    import argparse
    import logging
    import signal

    def writes_and_is_terminated(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a model")
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends; Python runs the handler here

    def main(args):
        write_atomically(str(tmp_path / "model.onnx"), writes_and_is_terminated)
    with pytest.raises(SystemExit) as exit_info:
        run_script(main, argparse.ArgumentParser(), logging.getLogger("t"), argv=[])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert capsys.readouterr().err.strip().endswith("ERROR stopped by SIGTERM; nothing half-written was left")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # run_script put the handler back
