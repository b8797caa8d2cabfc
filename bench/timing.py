"""Alternating-rounds timing shared by the bench scripts, and the record each run leaves in
bench/results/."""
import contextlib
import datetime
import io
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")


def images_per_second(run, batch, seconds):
    """Call ``run()`` (one batch of ``batch`` images) for about ``seconds``; images/s."""
    done, start = 0, time.perf_counter()
    while True:
        run()
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def serve(run, batch):
    """A worker's side of :class:`Worker`: warm up, say "ready", then answer each "SECONDS"
    line on stdin with the images/s of ``run`` (one batch of ``batch`` images) for that long."""
    run()
    print("ready", flush=True)
    for line in sys.stdin:
        print(images_per_second(run, batch, float(line)), flush=True)


class Worker:
    """A runner in its own process: it prints "ready", then answers each "SECONDS" line on its
    stdin with the images/s it ran for that long."""

    def __init__(self, process):
        self.process = process

    @classmethod
    def launch(cls, argv, env, skipped):
        """The worker of ``argv``; None, printing ``skipped``, where it does not get ready."""
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env)
        if process.stdout.readline().strip() != "ready":
            process.wait()
            print(skipped)
            return None
        return cls(process)

    def measure(self, seconds):
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def environment_without_omp_wait_policy():
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # src sets it in this process; the worker gets the defaults
    return env


def bench_script(name):
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


class TorchWorker(Worker):
    """PyTorch eager (timm) in its own process (bench/torch_worker.py); None from :meth:`start`
    where torch or timm is missing."""

    @staticmethod
    def command(mode, batch_size, image_size, num_classes, width):
        """``(argv, env)`` of the worker for timm's ghostnet of ``width``."""
        # here, not at the top: the worker imports this module and must not load MindSpore
        from src.ghostnet import WIDTHS  # our model names are timm's

        model = next(name for name, value in WIDTHS.items() if value == width)
        return ([sys.executable, bench_script("torch_worker.py"), "--mode", mode, "--batch_size", str(batch_size),
                 "--image_size", str(image_size), "--num_classes", str(num_classes), "--model", model],
                environment_without_omp_wait_policy())  # PyTorch with its own defaults

    @classmethod
    def start(cls, mode, batch_size, image_size, num_classes, width=1.0):
        """The worker for timm's ghostnet of ``width``; None, saying so, without torch or timm."""
        argv, env = cls.command(mode, batch_size, image_size, num_classes, width)
        return cls.launch(argv, env, "(PyTorch eager: torch and timm are not installed here; skipped)")

    @classmethod
    def export_onnx(cls, path, image_size, num_classes, width=1.0):
        """Write timm's ghostnet as ONNX to ``path`` (in the worker); False without torch or timm."""
        argv, env = cls.command("export", 1, image_size, num_classes, width)
        result = subprocess.run(argv + ["--output", path], capture_output=True, text=True, env=env)
        if "exported" not in result.stdout:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"(timm's ONNX model could not be made, skipped: {reason})")
            return False
        return True


class MindSporeFirstWorker(Worker):
    """Our network's eval forward in a process that imports ``mindspore`` before ``src``, as a
    MindSpore Hub user does, without OMP_WAIT_POLICY set (bench/mindspore_worker.py)."""

    @classmethod
    def start(cls, network, batch_size, image_size, num_classes, width=1.0):
        argv = [sys.executable, bench_script("mindspore_worker.py"), "--network", network, "--batch_size",
                str(batch_size), "--image_size", str(image_size), "--num_classes", str(num_classes),
                "--width", str(width)]
        return cls.launch(argv, environment_without_omp_wait_policy(),
                          "(the mindspore-first worker did not start; skipped)")


def alternating_medians(runners, batch, rounds, seconds):
    """``{name: median images/s}``: every runner warms up once, then they take turns.

    A runner is a callable (one batch, timed here) or has ``measure(seconds)``.
    """
    for run in runners.values():
        if callable(run):
            run()
    speeds = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            speeds[name].append(images_per_second(run, batch, seconds) if callable(run) else run.measure(seconds))
    for run in runners.values():
        if not callable(run):
            run.close()
    return {name: statistics.median(values) for name, values in speeds.items()}


def print_table(medians, references, extra=None):
    """One row per runner: images/s and the ratio to each present reference runner."""
    present = [r for r in references if r in medians]
    extra = extra or {}
    width = max([22] + [len(name) for name in medians])
    header = f"{'':>{width}} {'images/s':>9}" + "".join(f" {'vs ' + r:>18}" for r in present)
    header += "".join(f" {name:>9}" for name in next(iter(extra.values()), {}))
    print(header)
    for name, value in medians.items():
        row = f"{name:>{width}} {value:>9.1f}" + "".join(f" {value / medians[r]:>17.2f}x" for r in present)
        row += "".join(f" {cell:>9}" for cell in extra.get(name, {}).values())
        print(row)


def machine_description():
    """Lines naming this machine for a results file: CPU model, cores, int8 instructions, AMX."""
    from src.deploy.weight_storage import int8_instruction_set
    from src.kernels import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    amx = sorted(flag for flag in cpu_flags() if flag.startswith("amx"))
    return [f"CPU: {model}, {os.cpu_count()} cores",
            f"int8 instructions: {int8_instruction_set()}",
            f"AMX: {', '.join(amx) if amx else 'none'}"]


def _commit():
    try:
        found = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    return found or "unknown"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def recorded(name, folder=RESULTS_DIR):
    """Everything the block prints also goes to ``folder/NAME-DATE-TIME-COMMIT.md`` under a header
    with the date, the commit, the command and the machine (CPU, int8 instructions, AMX). The
    file is written, atomically, only when the block ends without an error. A bench script's
    child process (``--child``) records nothing: its parent does."""
    if "--child" in sys.argv:
        yield
        return
    captured = io.StringIO()
    stdout = sys.stdout
    sys.stdout = _Tee(stdout, captured)
    try:
        yield
    finally:
        sys.stdout = stdout
    now = datetime.datetime.now()
    commit = _commit()
    header = [f"# {name}, {now:%Y-%m-%d %H:%M}, commit {commit}", "",
              "`python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
              + "`", ""] + [f"- {line}" for line in machine_description()]
    text = "\n".join(header) + "\n\n```\n" + captured.getvalue().rstrip() + "\n```\n"
    from src.outputs import write_text

    os.makedirs(folder, exist_ok=True)
    path = write_text(os.path.join(folder, f"{name}-{now:%Y-%m-%d-%H%M%S}-{commit}.md"), text)
    print(f"\nrecorded in {os.path.relpath(path)}")
