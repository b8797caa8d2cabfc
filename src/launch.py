"""Launcher behind scripts/run_distribute_train.sh: checks the arguments and starts msrun.

    python -m src.launch DEVICE_NUM DATASET_PATH [--worker_num N] [--master_addr A]
                         [--master_port P] [--node_rank R] [--log_dir DIR] [train.py options]

DEVICE_NUM workers start on this host (msrun's --local_worker_num); --worker_num is the total
over all hosts (default DEVICE_NUM: one host). Each worker runs ``train.py --run_distribute``;
rank 0 alone writes checkpoints, and every worker's log lands in --log_dir, msrun's own output
in LOG_DIR/msrun.log. The terminal shows the workers' progress lines; a failed run ends in one
line naming the worker that ended first and its log. The logs of an earlier run in the same
folder are moved into LOG_DIR/run-DATE-TIME/ first, so that a rerun does not overwrite them.
"""
import argparse
import datetime
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

from src.cli import run_script
from src.errors import ConfigError, DatasetError, UserError

logger = logging.getLogger("launch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Start data-parallel GhostNet training with msrun; options not listed "
                    "here go to train.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("device_num", type=positive_int, help="workers on this host")
    parser.add_argument("dataset_path", help="train.mindrecord written by src.dataset")
    parser.add_argument("--worker_num", type=positive_int, default=None,
                        help="workers over all hosts (default: DEVICE_NUM, one host)")
    parser.add_argument("--master_addr", default="127.0.0.1", help="address of the host with node rank 0")
    parser.add_argument("--master_port", type=int, default=8118, help="port of the scheduler")
    parser.add_argument("--node_rank", type=int, default=0, help="this host's rank among the hosts")
    parser.add_argument("--log_dir", default=None, help="folder for every worker's log "
                                                        "(default: OUTPUT_DIR/logs)")
    return parser


def log_folder(args, train_args):
    """--log_dir, else OUTPUT_DIR/logs of train.py's --output_dir."""
    output_dir = "output"
    for i, arg in enumerate(train_args):
        if arg == "--output_dir" and i + 1 < len(train_args):
            output_dir = train_args[i + 1]
        elif arg.startswith("--output_dir="):
            output_dir = arg.split("=", 1)[1]
    return args.log_dir or os.path.join(output_dir, "logs")


def build_command(args, train_args):
    worker_num = args.worker_num or args.device_num
    if worker_num < args.device_num:
        raise ConfigError(f"--worker_num {worker_num} is smaller than DEVICE_NUM {args.device_num}")
    if worker_num > args.device_num and args.master_addr == "127.0.0.1":
        raise ConfigError("several hosts (--worker_num > DEVICE_NUM) need --master_addr, the address "
                         "of the host with --node_rank 0")
    if not os.path.isfile(args.dataset_path):
        raise DatasetError(f"dataset not found: {args.dataset_path}")
    msrun = shutil.which("msrun")
    if msrun is None:
        raise ConfigError("msrun not found on PATH; it comes with `pip install mindspore`")
    log_dir = log_folder(args, train_args)
    return [msrun, f"--worker_num={worker_num}", f"--local_worker_num={args.device_num}",
            f"--master_addr={args.master_addr}", f"--master_port={args.master_port}",
            f"--node_rank={args.node_rank}", f"--log_dir={log_dir}", "--join=True",
            os.path.join(REPO, "train.py"), "--run_distribute", "--dataset_path", args.dataset_path,
            *train_args]


class DistributedRunFailed(UserError):
    """msrun ended with an error; exits with msrun's code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


MSRUN_LOG = "msrun.log"
# a line of our own scripts' logging (src.cli.setup_logging), which the terminal shows
PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d (\[rank \d+\] )?(INFO|WARNING|ERROR) ")
# msrun's word on a worker that ended badly
WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
WORKER_PID = "worker process id"  # train.py logs "worker process id N" once it knows its rank


def archive_earlier_logs(log_dir):
    """Move the logs of an earlier run in ``log_dir`` into ``log_dir/run-DATE-TIME`` (the time its
    newest log was written); returns that folder or None."""
    if not os.path.isdir(log_dir):
        return None
    logs = [name for name in os.listdir(log_dir) if name.endswith(".log")]
    if not logs:
        return None
    newest = max(os.path.getmtime(os.path.join(log_dir, name)) for name in logs)
    archive = os.path.join(log_dir, f"run-{datetime.datetime.fromtimestamp(newest):%Y%m%d-%H%M%S}")
    os.makedirs(archive, exist_ok=True)
    for name in logs:
        os.replace(os.path.join(log_dir, name), os.path.join(archive, name))
    logger.info("the logs of the earlier run in %s are in %s", log_dir, archive)
    return archive


def describe_failure(log_dir):
    """Which worker ended first and why, with its log, from msrun's log and the workers' logs."""
    with open(os.path.join(log_dir, MSRUN_LOG), encoding="utf-8", errors="replace") as f:
        exits = WORKER_EXIT.findall(f.read())
    if not exits:
        return f"the distributed run failed; the logs are in {log_dir} (msrun's own: {MSRUN_LOG})"
    pid, code = exits[0][0], int(exits[0][1])
    cause = f"exit code {code}"
    if code < 0:
        cause = f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("worker_"):
            continue
        path = os.path.join(log_dir, name)
        with open(path, encoding="utf-8", errors="replace") as f:
            found = re.search(rf"\[rank (\d+)\] {WORKER_PID} {pid}\b", f.read())
        if found:
            rank = found.group(1)
            return (f"worker rank {rank} (process {pid}) ended first, {cause}; its log: {path}. The other "
                    f"workers stopped after it; all logs are in {log_dir}")
    return f"a worker (process {pid}) ended first, {cause}; the logs are in {log_dir}"


def main(args):
    """Start msrun with ``args.extra`` (the options meant for train.py)."""
    command = build_command(args, args.extra)
    log_dir = log_folder(args, args.extra)
    archive_earlier_logs(log_dir)
    os.makedirs(log_dir, exist_ok=True)
    logger.info("running: %s", " ".join(command))
    logger.info("every worker's log: %s/worker_N.log; msrun's: %s/%s", log_dir, log_dir, MSRUN_LOG)
    with open(os.path.join(log_dir, MSRUN_LOG), "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
        try:
            for line in process.stdout:
                log.write(line)
                if PROGRESS_LINE.match(line):
                    sys.stderr.write(line)
        except BaseException:  # SIGTERM or Ctrl-C for the launcher: msrun and its workers stop too
            process.send_signal(signal.SIGTERM)
            process.wait()
            raise
        code = process.wait()
    if code:
        raise DistributedRunFailed(describe_failure(log_dir), code)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger, known_args=True)
