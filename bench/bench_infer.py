"""Eval-mode inference speed of GhostNet through MindSpore: fast CPU path, framework convolution, PyTorch.

    python bench/bench_infer.py [--device_target CPU] [--batch_sizes 1 16] [--networks float fake-quant int8]

For each network form (float: BatchNorm folded, as eval.py runs float checkpoints; int8:
the network int8 checkpoints load into; fake-quant: the int8 fine-tuning form) it times
the fast CPU path (src/kernels/) and MindSpore's own operators (GRAPH_MODE), plus:

* ``float fast, ms first``: the float network in a process that imports ``mindspore`` before
  ``src`` without OMP_WAIT_POLICY set, as a MindSpore Hub user's script does
  (bench/mindspore_worker.py): speed must not depend on the import order;
* timm's ghostnet in PyTorch eager where torch and timm are installed (in a worker process
  with PyTorch's own OpenMP settings),

in alternating rounds. Reports the median images/s and the ratios to PyTorch, to the float
network on the fast path and to the framework's operators. Weights are random: speed does
not depend on them.
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import src  # noqa: E402,F401  (before MindSpore: sets OMP_WAIT_POLICY)
from bench.timing import MindSporeFirstWorker, TorchWorker, alternating_medians, print_table  # noqa: E402
from src.checkpoint import CheckpointKind  # noqa: E402
from src.cli import add_width_argument  # noqa: E402



def mindspore_runners(args, network, batch):
    import mindspore as ms
    from src.deploy.fold import fold_batchnorm_for_inference
    from src.models import network_for_kind

    images = ms.Tensor(np.random.default_rng(batch).standard_normal(
        (batch, 3, args.image_size, args.image_size)).astype(np.float32))
    runners = {}
    for fast in (True, False):
        ms.set_seed(0)
        net = network_for_kind(network, args.width, args.num_classes, fast_cpu=fast)
        net.set_train(False)
        if network == "float":
            fold_batchnorm_for_inference(net)
        label = f"{network} {'fast' if fast else 'framework'}"
        runners[label] = lambda n=net: n(images).asnumpy()
    return runners


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "GPU", "Ascend"),
                        help="where MindSpore runs (the fast path exists on CPU only)")
    add_width_argument(parser)
    parser.add_argument("--num_classes", type=int, default=1000, help="classes of the classifier")
    parser.add_argument("--image_size", type=int, default=224, help="side of the input images")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="batch sizes to time")
    parser.add_argument("--networks", nargs="+", default=["float", "fake-quant"],
                        choices=[kind.value for kind in CheckpointKind],
                        help="network forms to time")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one runner's turn in a round")
    args = parser.parse_args()

    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    print(f"GhostNet width {args.width}, {args.num_classes} classes, {args.image_size}px eval, "
          f"{args.device_target} ({os.cpu_count()} cores), GRAPH_MODE; median of {args.rounds} "
          f"alternating rounds of {args.seconds:g} s")
    for batch in args.batch_sizes:
        runners = {}
        for network in args.networks:
            runners.update(mindspore_runners(args, network, batch))
        workers = {}
        if "float" in args.networks and args.device_target == "CPU":
            workers["float fast, ms first"] = MindSporeFirstWorker.start(
                "float", batch, args.image_size, args.num_classes, args.width)
        workers["pytorch eager"] = TorchWorker.start("infer", batch, args.image_size, args.num_classes, args.width)
        runners.update({name: worker for name, worker in workers.items() if worker is not None})
        medians = alternating_medians(runners, batch, args.rounds, args.seconds)
        print(f"\nbatch {batch}")
        print_table(medians, ("pytorch eager", "float fast", f"{args.networks[0]} framework"))


if __name__ == "__main__":
    from bench.timing import recorded

    with recorded("bench_infer"):
        main()
