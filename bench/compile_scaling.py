"""How MindSpore's graph compile time grows with the number of layers, float and QAT.

    python bench/compile_scaling.py [--layers float qat] [--blocks 30 60 120] [--channels 16] [--side_by_side]

Compiles the GRAPH_MODE training step (forward, backward, momentum update) of a chain of
``K`` identical blocks, for each ``K`` in ``--blocks`` and each kind in ``--layers``, each in a
fresh child process: ``float``, a 1x1 convolution, BatchNorm and ReLU; ``qat``, the same
convolution and BatchNorm as one fake-quant layer (:class:`src.quant.QuantConv2d`, the layer
of the QAT network, on the fast CPU path) and ReLU. It prints the first step's seconds (the
compile: the step itself takes milliseconds on an 8x8 input), the seconds per block, and the
exponent of the growth between neighbouring sizes (1 where the compile is linear in the
number of layers, 2 where it is quadratic).

The compile is single-threaded, so with ``--side_by_side`` two sizes compile at once on two
cores and share the host's speed of the moment, which makes their ratio steadier on a
machine whose speed drifts.
"""
import argparse
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def growth_exponents(blocks, seconds):
    """``log(t2 / t1) / log(k2 / k1)`` for each neighbouring pair of (blocks, seconds), in order
    of blocks; None where a time is missing or not positive."""
    pairs = sorted(zip(blocks, seconds))
    exponents = []
    for (k1, t1), (k2, t2) in zip(pairs, pairs[1:]):
        valid = t1 is not None and t2 is not None and t1 > 0 and t2 > 0 and k2 > k1
        exponents.append(math.log(t2 / t1) / math.log(k2 / k1) if valid else None)
    return exponents


def child(kind, blocks, channels):
    sys.path.insert(0, REPO)
    import src  # noqa: F401  (before MindSpore: sets OMP_WAIT_POLICY)
    import mindspore as ms
    import mindspore.nn as nn
    import numpy as np

    from src.kernels.fast_cpu import enable_fast_cpu_path
    from src.quant.fake_quant import QuantConv2d

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

    def block():
        conv, bn = nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels)
        layers = [conv, bn] if kind == "float" else [QuantConv2d(conv, bn)]
        return nn.SequentialCell(layers + [nn.ReLU()])

    chain = enable_fast_cpu_path(nn.SequentialCell([block() for _ in range(blocks)]))
    loss = nn.WithLossCell(nn.SequentialCell([chain, nn.Flatten()]), nn.MSELoss())
    step = nn.TrainOneStepCell(loss, nn.Momentum(chain.trainable_params(), 0.01, 0.9))
    step.set_train(True)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, channels, 8, 8)).astype(np.float32))
    target = ms.Tensor(np.zeros((2, channels * 64), np.float32))
    start = time.perf_counter()
    step(x, target).asnumpy()
    print(f"SECONDS {time.perf_counter() - start:.3f}")


def child_command(kind, blocks, channels):
    return [sys.executable, os.path.abspath(__file__), "--child", kind, str(blocks), "--channels", str(channels)]


def launch(kind, blocks, channels):
    # stderr dropped: MindSpore's warnings would interleave between two children side by side
    return subprocess.Popen(child_command(kind, blocks, channels), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def compile_seconds(process):
    """The child's first-step seconds, or None where it failed."""
    out, _ = process.communicate()
    found = [line.split()[1] for line in out.splitlines() if line.startswith("SECONDS ")]
    return float(found[0]) if process.returncode == 0 and found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--layers", nargs="+", choices=("float", "qat"), default=["float", "qat"],
                        help="kinds of block: float (convolution, BatchNorm, ReLU) or qat (QuantConv2d, ReLU)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[30, 60, 120], help="chain lengths to compile")
    parser.add_argument("--channels", type=int, default=16, help="channels of every block")
    parser.add_argument("--side_by_side", action="store_true",
                        help="compile two sizes at once (two cores), so each pair shares the host's speed")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child[0], int(args.child[1]), args.channels)
        return
    blocks = sorted(set(args.blocks))
    runs = [(kind, k) for kind in args.layers for k in blocks]
    width = 2 if args.side_by_side else 1
    seconds = {}
    for i in range(0, len(runs), width):
        running = {run: launch(*run, args.channels) for run in runs[i:i + width]}
        seconds.update({run: compile_seconds(process) for run, process in running.items()})
    print("| layer | blocks | first step, s | s per block | growth exponent from the previous size |")
    print("| --- | --- | --- | --- | --- |")
    for kind in args.layers:
        times = [seconds[(kind, k)] for k in blocks]
        for k, t, exponent in zip(blocks, times, [None] + growth_exponents(blocks, times)):
            cells = ["failed", "", ""] if t is None else [
                f"{t:.1f}", f"{t / k:.3f}", "" if exponent is None else f"{exponent:.2f}"]
            print(f"| {kind} | {k} | " + " | ".join(cells) + " |")
    failed = [run for run, t in seconds.items() if t is None]
    if failed:
        sys.exit("compiles failed; run one alone to see why: " + " ".join(child_command(*failed[0], args.channels)))


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("compile_scaling"):
        main()
