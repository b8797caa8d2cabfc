"""Training speed of GhostNet in GRAPH_MODE: images/s of full training steps (forward,
backward, momentum update) at 224 px and at a smaller size, on the chosen device.

    python bench/bench_train.py [--device_target CPU] [--image_sizes 224 64] [--batch_size 16] [--quant]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"),
                        help="where to run")
    parser.add_argument("--image_sizes", type=int, nargs="+", default=[224, 64], help="input sides to time")
    parser.add_argument("--batch_size", type=int, default=16, help="images per training step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--quant", action="store_true", help="time int8 fake-quant fine-tuning steps")
    args = parser.parse_args()

    import mindspore as ms
    import mindspore.nn as nn
    import numpy as np

    from src.ghostnet import GhostNet
    from src.quant import quantize_network
    from src.train_utils import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    print(f"GhostNet 1.0x training step, {'fake-quant int8' if args.quant else 'float'}, "
          f"{args.device_target}, batch {args.batch_size}, median of {args.steps}")
    print(f"{'size':>5} {'images/s':>9} {'median ms':>10} {'compile s':>10}")
    rng = np.random.default_rng(0)
    for size in args.image_sizes:
        net = GhostNet(num_classes=37)
        if args.quant:
            net = quantize_network(net)
        optimizer = build_optimizer(net, np.full(100, 0.01, np.float32), 0.9, 4e-5, 1024.0)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss(label_smoothing=0.1)),
                                   optimizer, sens=1024.0)
        step.set_train(True)
        images = ms.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32))
        labels = ms.Tensor(rng.integers(0, 37, args.batch_size).astype(np.int32))
        start = time.perf_counter()
        step(images, labels).asnumpy()
        compile_s = time.perf_counter() - start
        step(images, labels).asnumpy()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(images, labels).asnumpy()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{size:>5} {args.batch_size / median:>9.1f} {median * 1e3:>10.1f} {compile_s:>10.1f}")


if __name__ == "__main__":
    main()
