"""Where the first training step's graph compile spends its time, by MindSpore compile phase.

    python bench/compile_phases.py [--quant [--bn_frozen] [--observers_frozen]] [--image_size 64]
                                   [--batch_size 16] [--top 12]

Compiles one GRAPH_MODE training step on the fast CPU path (float, or with ``--quant`` the
fake-quant QAT network; with ``--bn_frozen``, ``--observers_frozen`` its BatchNorm statistics,
activation ranges frozen) in a child process with
MindSpore's INFO log on, and reads the phases back from the log's timestamps: the pipeline's
actions (the frontend's type inference, optimize, ...; ``task_emit``, the backend's compile)
and the optimize action's passes summed over their rounds (``renormalize`` is the type
inference rerun after a pass changed the graph). The INFO log makes the compile itself a
little slower than ``bench_train.py``'s first step.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = re.compile(r"-(\d+):(\d+):(\d+)\.(\d+)\.(\d+) ")
ACTION = re.compile(r"Status record: (start|end) (\S+) action")
SUB_PASS = re.compile(r"RunFunc\] (Start|End) (opt_\w+)\.r(\d+)\.j\d+\.(\w+?)(?:\.(?:un)?changed)?$")


def seconds_of(line):
    found = STAMP.search(line)
    if found is None:
        return None
    hours, minutes, secs, millis, micros = (int(part) for part in found.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1e3 + micros / 1e6


def child(args):
    sys.path.insert(0, REPO)
    import src  # noqa: F401  (before MindSpore: sets OMP_WAIT_POLICY)
    import mindspore as ms
    from bench.bench_train import mindspore_step

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    _, first = mindspore_step(args, args.image_size, fast=True, quant=args.quant, bn_frozen=args.bn_frozen,
                              observers_frozen=args.observers_frozen)
    print(f"first step {first:.3f}", flush=True)


class PhaseLog:
    """Durations read from the compile's log lines."""

    def __init__(self):
        self.actions = {}
        self.passes = {}
        self.pass_rounds = collections.defaultdict(set)
        self.first_step = None
        self._open = {}

    def read(self, line):
        line = line.rstrip()
        if line.startswith("first step "):
            self.first_step = float(line.split()[2])
            return
        when = seconds_of(line)
        if when is None:
            return
        action = ACTION.search(line)
        if action:
            self._span(("action", action.group(2)), action.group(1) == "start", when, self.actions)
            return
        sub_pass = SUB_PASS.search(line)
        if sub_pass:
            edge, stage, round_, name = sub_pass.groups()
            key = f"{stage}.{name}"
            self.pass_rounds[key].add(round_)
            self._span(("pass", key, round_), edge == "Start", when, self.passes)

    def _span(self, key, starts, when, totals):
        if starts:
            self._open[key] = when
        elif key in self._open:
            elapsed = (when - self._open.pop(key)) % 86400  # the log stamps the time of day
            totals[key[1]] = totals.get(key[1], 0.0) + elapsed


def parent(args):
    env = dict(os.environ, GLOG_v="1", GLOG_logtostderr="1")
    command = [sys.executable, os.path.abspath(__file__), "--child", "--image_size", str(args.image_size),
               "--batch_size", str(args.batch_size), "--num_classes", str(args.num_classes)]
    command += [f"--{flag}" for flag in ("quant", "bn_frozen", "observers_frozen") if getattr(args, flag)]
    frozen = [part for part, flag in (("BatchNorm", args.bn_frozen), ("ranges", args.observers_frozen)) if flag]
    form = "float" if not args.quant else "fake-quant (QAT)" + "".join(f", {part} frozen" for part in frozen)
    print(f"compiling one {form} training step, {args.image_size} px, batch {args.batch_size}, "
          f"fast CPU path, with MindSpore's INFO log on ...", flush=True)
    log = PhaseLog()
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as process:
        for line in process.stdout:
            log.read(line)
    if process.returncode != 0 or log.first_step is None:
        sys.exit(f"the compiling process failed (exit {process.returncode}); run it alone to see why: "
                 f"GLOG_v=1 {' '.join(command)}")
    print(f"first step {log.first_step:.1f} s (process {time.perf_counter() - start:.1f} s)\n")
    print("pipeline actions (seconds; task_emit is the backend's compile: kernel graph, kernels, actors):")
    for name, seconds in sorted(log.actions.items(), key=lambda item: -item[1])[:args.top]:
        print(f"  {seconds:7.2f}  {name}")
    print(f"\noptimize passes, summed over their rounds (seconds, rounds), top {args.top}:")
    for name, seconds in sorted(log.passes.items(), key=lambda item: -item[1])[:args.top]:
        print(f"  {seconds:7.2f}  {len(log.pass_rounds[name]):2d}  {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quant", action="store_true", help="compile the fake-quant (QAT) training step")
    parser.add_argument("--bn_frozen", action="store_true", help="with --quant: BatchNorm statistics frozen")
    parser.add_argument("--observers_frozen", action="store_true", help="with --quant: activation ranges frozen")
    parser.add_argument("--image_size", type=int, default=64, help="side of the input images")
    parser.add_argument("--batch_size", type=int, default=16, help="images per training step")
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    parser.add_argument("--top", type=int, default=12, help="rows shown per table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag in ("bn_frozen", "observers_frozen"):
        if getattr(args, flag) and not args.quant:
            parser.error(f"--{flag} needs --quant")
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("compile_phases"):
        main()
