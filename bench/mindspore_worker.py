"""GhostNet's eval forward through MindSpore with ``mindspore`` imported before ``src``, as a
MindSpore Hub user's script does, timed on request: the import-order side of bench_infer.py.

Runs in its own process, started without OMP_WAIT_POLICY in its environment, so that
MindSpore's OpenMP reads its own defaults as it does for such a user. Prints "ready", then
for each line "SECONDS" on stdin runs for that long and prints images/s.
"""
import argparse
import os
import sys

import mindspore as ms  # first, before src: the point of this worker
import numpy as np

from timing import serve  # this folder is on the path of a script run from it

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.deploy.fold import fold_batchnorm_for_inference  # noqa: E402
from src.models import network_for_kind  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="float")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    net = network_for_kind(args.network, args.width, args.num_classes)
    net.set_train(False)
    if args.network == "float":
        fold_batchnorm_for_inference(net)
    images = ms.Tensor(np.random.default_rng(args.batch_size).standard_normal(
        (args.batch_size, 3, args.image_size, args.image_size)).astype(np.float32))

    def run():
        net(images).asnumpy()
    serve(run, args.batch_size)


if __name__ == "__main__":
    main()
