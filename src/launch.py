"""Launcher behind scripts/run_distribute_train.sh: checks the arguments and starts msrun.

    python -m src.launch DEVICE_NUM DATASET_PATH [--worker_num N] [--master_addr A]
                         [--master_port P] [--node_rank R] [--log_dir DIR] [train.py options]

DEVICE_NUM workers start on this host (msrun's --local_worker_num); --worker_num is the total
over all hosts (default DEVICE_NUM: one host). Each worker runs ``train.py --run_distribute``;
rank 0 alone writes checkpoints, and every worker's log lands in --log_dir.
"""
import argparse
import logging
import os
import shutil
import subprocess

from src.cli import run_script
from src.errors import ConfigError, DatasetError

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
    output_dir = "output"
    for i, arg in enumerate(train_args):
        if arg == "--output_dir" and i + 1 < len(train_args):
            output_dir = train_args[i + 1]
        elif arg.startswith("--output_dir="):
            output_dir = arg.split("=", 1)[1]
    log_dir = args.log_dir or os.path.join(output_dir, "logs")
    return [msrun, f"--worker_num={worker_num}", f"--local_worker_num={args.device_num}",
            f"--master_addr={args.master_addr}", f"--master_port={args.master_port}",
            f"--node_rank={args.node_rank}", f"--log_dir={log_dir}", "--join=True",
            os.path.join(REPO, "train.py"), "--run_distribute", "--dataset_path", args.dataset_path,
            *train_args]


def main(args):
    """Start msrun with ``args.extra`` (the options meant for train.py); returns its exit code."""
    command = build_command(args, args.extra)
    logger.info("running: %s", " ".join(command))
    return subprocess.call(command)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger, known_args=True)
