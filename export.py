"""Export a float or int8 GhostNet checkpoint to MINDIR, ONNX or AIR.

    python export.py --checkpoint_path CKPT --file_format MINDIR [--file_name NAME]

The network is built for the checkpoint it is given (float, or int8 from train.py --quant)
and exported in eval mode for an input of batch_size x 3 x image_size x image_size. ONNX is
written from the weights (src/deploy/onnx_export.py): a float model with BatchNorm folded, or, from
an int8 checkpoint, a QDQ model with int8 weights that runs the int8 kernels of onnxruntime and
OpenVINO (its metadata says how the weights are stored and where that is exact); its batch
axis stays dynamic unless --batch_size is given. The class_names.txt beside the
checkpoint is copied beside the model.
"""
import argparse
import logging
import os

import src  # noqa: F401  (before MindSpore: sets OMP_WAIT_POLICY, see src/__init__.py)
import mindspore as ms
import numpy as np

from src.checkpoint import CheckpointKind
from src.cli import add_device_argument, add_network_arguments, run_script, set_device
from src.config import check_at_least_one
from src.dataset import copy_class_names
from src.deploy.fold import fold_batchnorm_for_inference
from src.deploy.onnx_export import onnx_model_from_checkpoint
from src.deploy.predictors import require_module
from src.deploy.weight_storage import WEIGHT_STORAGES
from src.errors import ConfigError, UserError
from src.models import load_network
from src.outputs import output_folder, write_atomically

logger = logging.getLogger("export")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="float or int8 checkpoint (.ckpt)")
    parser.add_argument("--file_format", required=True, choices=tuple(SUFFIXES),
                        help="MINDIR (MindSpore Lite, mindspore.load), ONNX (onnxruntime), AIR (Ascend only)")
    parser.add_argument("--file_name", default="ghostnet",
                        help="output file; the format's suffix is added when missing")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="batch size of the exported input (default: 1; ONNX: dynamic)")
    parser.add_argument("--image_size", type=int, default=224, help="side of the exported input")
    parser.add_argument("--int8_weights", default="int8", choices=WEIGHT_STORAGES,
                        help="ONNX from an int8 checkpoint: how the int8 weights are stored. int8 is the fast "
                             "file: exact on x86 CPUs with VNNI and on ARM, and everywhere when loaded through "
                             "our predictors or src.deploy.weight_storage.for_this_cpu, which re-store it for "
                             "x86 CPUs without VNNI. uint8 (zero point 128) is exact as stored on every CPU, "
                             "for runtimes you cannot add that line to; slower on VNNI (README: Deploy int8)")
    add_network_arguments(parser)
    add_device_argument(parser)
    return parser


def output_path(file_name, file_format):
    suffix = SUFFIXES[file_format]
    return file_name if file_name.endswith(suffix) else file_name + suffix


def export_onnx(args, path):
    require_module("onnx", "ONNX export")
    model, kind = onnx_model_from_checkpoint(args.checkpoint_path, args.width, args.num_classes,
                                             args.image_size, args.batch_size, int8_weights=args.int8_weights)
    data = model.SerializeToString()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomically(path, write, needed=len(data))
    return kind


def export_with_mindspore(args, path):
    # the framework's convolutions: the graph must not reference this machine's compiled kernels
    net, kind = load_network(args.checkpoint_path, args.width, args.num_classes, fast_cpu=False)
    if kind == CheckpointKind.FLOAT:
        fold_batchnorm_for_inference(net)
    net.set_train(False)
    sample = ms.Tensor(np.zeros((args.batch_size or 1, 3, args.image_size, args.image_size), np.float32))
    # MindSpore writes the file itself: to a temporary name with the suffix, renamed when complete
    try:
        write_atomically(path, lambda tmp: ms.export(net, sample, file_name=tmp, file_format=args.file_format))
    except RuntimeError as err:
        raise UserError(f"MindSpore could not export the {kind} network to {args.file_format}: "
                         f"{str(err).splitlines()[0]}") from err
    return kind


def main(args):
    check_at_least_one(batch_size=args.batch_size, image_size=args.image_size, num_classes=args.num_classes)
    if args.file_format == "AIR" and args.device_target != "Ascend":
        raise ConfigError("AIR export needs an Ascend device (--device_target Ascend); "
                         "on CPU and GPU export MINDIR or ONNX instead")
    set_device(args.device_target)
    path = output_path(args.file_name, args.file_format)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--file_name {args.file_name}: {path} is a folder; choose another --file_name")
    with output_folder(folder, "--file_name", value=args.file_name):
        if args.file_format == "ONNX":
            kind = export_onnx(args, path)
        else:
            kind = export_with_mindspore(args, path)
        copy_class_names(args.checkpoint_path, folder)
    logger.info("exported %s network %s -> %s (%.1f MB)", kind, args.checkpoint_path, path,
                os.path.getsize(path) / 2**20)
    return path


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
