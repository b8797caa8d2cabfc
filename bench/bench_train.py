"""Training speed of GhostNet through MindSpore: fast CPU path, framework convolution, PyTorch.

    python bench/bench_train.py [--device_target CPU] [--image_sizes 64 224] [--batch_size 16] [--quant]

Full training steps (forward, backward, momentum update) in GRAPH_MODE of the float network
with the fast CPU path (src/kernels/) and with MindSpore's own operators, plus timm's
ghostnet in PyTorch eager (SGD with momentum) where torch and timm are installed (in a
worker process with PyTorch's own OpenMP settings), in alternating rounds. With ``--quant``
the int8 fake-quant (QAT) network's steps on the fast path join them, as train.py's
fine-tuning compiles them: BatchNorm on batch statistics (the first ``--quant_bn_freeze_epoch``
epochs), BatchNorm frozen, and both BatchNorm and activation ranges frozen (from
``--quant_observer_freeze_epoch`` on; the quick start's whole fine-tuning); the float
framework runner is left out. Reports the median images/s, the ratios, and the
time of each MindSpore runner's first step (its graph compile).
"""
import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.timing import TorchWorker, alternating_medians, print_table  # noqa: E402


def mindspore_step(args, size, fast=False, quant=False, bn_frozen=False, observers_frozen=False):
    """The training step as a runner, and the seconds its first call took (the graph compile).
    ``bn_frozen``, ``observers_frozen``: the QAT step with BatchNorm statistics, activation
    ranges frozen (other, smaller graphs)."""
    import mindspore as ms
    import mindspore.nn as nn

    from src.kernels.fast_cpu import enable_fast_cpu_path
    from src.ghostnet import GhostNet
    from src.quant import prepare, set_bn_frozen, set_observers_frozen
    from src.train_utils import build_optimizer

    ms.set_seed(0)
    net = GhostNet(num_classes=args.num_classes)
    if quant:
        net = prepare(net)
        set_bn_frozen(net, bn_frozen)
        set_observers_frozen(net, observers_frozen)
    if fast:
        enable_fast_cpu_path(net)
    optimizer = build_optimizer(net, np.full(100000, 0.01, np.float32), 0.9, 4e-5, 1024.0, compiled=fast)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss(label_smoothing=0.1)),
                               optimizer, sens=1024.0)
    step.set_train(True)
    rng = np.random.default_rng(size)
    images = ms.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, args.num_classes, args.batch_size).astype(np.int32))
    start = time.perf_counter()
    step(images, labels).asnumpy()
    return (lambda: step(images, labels).asnumpy()), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"),
                        help="where MindSpore runs (the fast path exists on CPU only)")
    parser.add_argument("--image_sizes", type=int, nargs="+", default=[64, 224], help="input sides to time")
    parser.add_argument("--batch_size", type=int, default=16, help="images per training step")
    parser.add_argument("--num_classes", type=int, default=37, help="classes of the classifier")
    parser.add_argument("--quant", action="store_true", help="time int8 fake-quant fine-tuning steps")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one runner's turn in a round")
    args = parser.parse_args()

    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    form = "float and fake-quant int8 (QAT)" if args.quant else "float"
    print(f"GhostNet 1.0x training steps ({form}), batch {args.batch_size}, {args.device_target} "
          f"({os.cpu_count()} cores), GRAPH_MODE; median of {args.rounds} alternating rounds of {args.seconds:g} s")
    forms = {"float fast": dict(fast=True)}
    if args.quant:
        forms["fake-quant fast"] = dict(fast=True, quant=True)
        forms["fake-quant BN frozen"] = dict(fast=True, quant=True, bn_frozen=True)
        forms["fake-quant BN+ranges frozen"] = dict(fast=True, quant=True, bn_frozen=True, observers_frozen=True)
    else:
        forms["float framework"] = {}
    for size in args.image_sizes:
        runners, first_steps = {}, {}
        for name, form in forms.items():
            runners[name], first_steps[name] = mindspore_step(args, size, **form)
        torch_worker = TorchWorker.start("train", args.batch_size, size, args.num_classes)
        if torch_worker is not None:
            runners["pytorch eager"] = torch_worker
        medians = alternating_medians(runners, args.batch_size, args.rounds, args.seconds)
        print(f"\n{size} px")
        print_table(medians, ("pytorch eager", "float fast"))
        print("first step (graph compile included): " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in first_steps.items()))


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_train"):
        main()
