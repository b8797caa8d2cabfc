"""Training speed of GhostNet through MindSpore: fast CPU path, framework convolution, PyTorch.

    python bench/bench_train.py [--device_target CPU] [--image_sizes 64 224] [--batch_size 16] [--quant]

Full training steps (forward, backward, momentum update) in GRAPH_MODE with the fast CPU
path (src/kernels/fast_cpu.py) and with MindSpore's own convolution, plus timm's ghostnet in
PyTorch eager (SGD with momentum) where torch and timm are installed (in a worker process
with PyTorch's own OpenMP settings), in alternating rounds. Reports the median images/s and
the ratios.
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.timing import TorchWorker, alternating_medians, print_table  # noqa: E402


def mindspore_step(args, size, fast):
    import mindspore as ms
    import mindspore.nn as nn

    from src.kernels.fast_cpu import enable_fast_cpu_path
    from src.ghostnet import GhostNet
    from src.quant import prepare
    from src.train_utils import build_optimizer

    ms.set_seed(0)
    net = GhostNet(num_classes=args.num_classes)
    if args.quant:
        net = prepare(net)
    if fast:
        enable_fast_cpu_path(net)
    optimizer = build_optimizer(net, np.full(100000, 0.01, np.float32), 0.9, 4e-5, 1024.0)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss(label_smoothing=0.1)),
                               optimizer, sens=1024.0)
    step.set_train(True)
    rng = np.random.default_rng(size)
    images = ms.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, args.num_classes, args.batch_size).astype(np.int32))
    return lambda: step(images, labels).asnumpy()


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
    form = "fake-quant int8" if args.quant else "float"
    print(f"GhostNet 1.0x training steps ({form}), batch {args.batch_size}, {args.device_target} "
          f"({os.cpu_count()} cores), GRAPH_MODE; median of {args.rounds} alternating rounds of {args.seconds:g} s")
    for size in args.image_sizes:
        runners = {"mindspore fast": mindspore_step(args, size, True),
                   "mindspore framework": mindspore_step(args, size, False)}
        torch_worker = TorchWorker.start("train", args.batch_size, size, args.num_classes)
        if torch_worker is not None:
            runners["pytorch eager"] = torch_worker
        medians = alternating_medians(runners, args.batch_size, args.rounds, args.seconds)
        print(f"\n{size} px")
        print_table(medians, ("mindspore framework", "pytorch eager"))


if __name__ == "__main__":
    main()
