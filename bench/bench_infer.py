"""Eval-mode inference speed of GhostNet in GRAPH_MODE: images/s, compile time, peak memory.

    python bench/bench_infer.py [--device_target CPU] [--batch_sizes 1 16 64] [--image_size 224]
                                [--networks float fakequant int8]

float is the network eval.py runs for float checkpoints, fakequant the int8 fine-tuning
form (train.py --quant) and int8 the network int8 checkpoints load into. Each network and
batch size runs in its own process so that its peak memory is its own.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args):
    import mindspore as ms
    import numpy as np
    sys.path.insert(0, REPO)
    from src.ghostnet import WIDTHS
    from src.models import network_for_kind

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    kind = {"float": "float", "fakequant": "qat", "int8": "int8"}[args.network]
    net = network_for_kind(kind, WIDTHS[args.model], args.num_classes)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal(
        (args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32))
    start = time.perf_counter()
    net(x).asnumpy()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        net(x).asnumpy()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        net(x).asnumpy()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device_target != "CPU":
        try:
            peak_mb = ms.runtime.max_memory_allocated() / 2**20
        except Exception:  # device memory statistics are not on every backend
            pass
    print(json.dumps({"network": args.network, "batch": args.batch_size, "images_per_s": args.batch_size / median,
                      "median_ms": median * 1e3, "compile_s": compile_s, "peak_mb": peak_mb}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"),
                        help="where to run")
    parser.add_argument("--model", default="ghostnet_100", help="ghostnet_050, ghostnet_100 or ghostnet_130")
    parser.add_argument("--num_classes", type=int, default=1000, help="classes of the classifier")
    parser.add_argument("--image_size", type=int, default=224, help="side of the input images")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64], help="batch sizes to time")
    parser.add_argument("--networks", nargs="+", default=["float", "fakequant", "int8"],
                        choices=("float", "fakequant", "int8"), help="network forms to time")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after the first (compiling) one")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--network", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.batch_size is not None:
        measure(args)
        return

    print(f"GhostNet {args.model} eval, GRAPH_MODE, {args.device_target}, {args.image_size}px, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'network':>9} {'batch':>5} {'images/s':>9} {'median ms':>10} {'compile s':>10} {'peak MB':>8}")
    for batch in args.batch_sizes:
        for network in args.networks:
            cmd = [sys.executable, __file__, "--batch_size", str(batch), "--network", network] + sys.argv[1:]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
            if out.returncode != 0:
                print(f"{network:>9} {batch:>5} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{network:>9} {row['batch']:>5} {row['images_per_s']:>9.1f} {row['median_ms']:>10.1f} "
                  f"{row['compile_s']:>10.1f} {row['peak_mb']:>8.0f}")


if __name__ == "__main__":
    main()
