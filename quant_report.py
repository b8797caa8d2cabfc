"""Where int8 loses accuracy: a float checkpoint against its int8 form, layer by layer.

    python quant_report.py --float_checkpoint FLOAT.ckpt --int8_checkpoint INT8.ckpt \
        --dataset_path OUT_DIR/test.mindrecord [--batches 4] [--output_dir quant_report]
    python quant_report.py --float_checkpoint FLOAT.ckpt --dataset_path OUT_DIR/test.mindrecord

Both networks run on the first --batches batches of the dataset. Without --int8_checkpoint the
float checkpoint is calibrated here, as ``train.py --quant --epoch_size 0`` does: post-training
quantization on --calib_batches batches of --calib_dataset_path (default: the train.mindrecord
beside --dataset_path), not on the batches compared. Per layer: the signal-to-
quantization-noise ratio (dB) of the layer alone, of the network up to it, and of its weights;
the input's uint8 range against the values seen there (share used, share clipped). The table
is sorted worst layer first and written with a JSON and a PNG to --output_dir
(quant_report.txt, quant_report.json, quant_report.png; the PNG needs matplotlib).
"""
import argparse
import json
import logging
import math
import os

from src.checkpoint import CheckpointKind
from src.cli import add_device_argument, add_network_arguments, run_script, set_device
from src.config import check_at_least_one
from src.dataset import batches, check_num_classes, create_dataset
from src.errors import CheckpointError, DatasetError, MissingPackageError
from src.models import load_network
from src.outputs import output_folder, write_text
from src.plots import draw_quantization_report
from src.quant import calibrate, convert, prepare
from src.quant.report import format_table, quantization_report

logger = logging.getLogger("quant_report")
REPORT_NAME = "quant_report"


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--float_checkpoint", required=True, help="the float checkpoint (.ckpt)")
    parser.add_argument("--int8_checkpoint", default=None,
                        help="its int8 form (ghostnet-int8.ckpt of train.py --quant); without it the float "
                             "checkpoint is calibrated here on --calib_batches batches")
    parser.add_argument("--dataset_path", required=True, help="MindRecord to compare on (e.g. test.mindrecord)")
    parser.add_argument("--batches", type=int, default=4, help="batches compared")
    parser.add_argument("--calib_batches", type=int, default=10,
                        help="batches to calibrate on when no --int8_checkpoint is given")
    parser.add_argument("--calib_dataset_path", default=None,
                        help="MindRecord to calibrate on when no --int8_checkpoint is given (default: the "
                             "train.mindrecord beside --dataset_path)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per batch")
    parser.add_argument("--image_size", type=int, default=224, help="side of the centre crop")
    add_network_arguments(parser)
    parser.add_argument("--num_workers", type=int, default=2, help="data loading workers")
    parser.add_argument("--output_dir", default=REPORT_NAME, help="folder for the report's three files")
    parser.add_argument("--top", type=int, default=15, help="rows printed (the files hold every layer)")
    add_device_argument(parser)
    return parser


def load(args, path, kind, flag, what):
    """The network the checkpoint ``path`` holds, on the framework's operators (the report
    watches its cells); a checkpoint of another kind is refused, naming ``flag`` and ``what``."""
    net, found = load_network(path, args.width, args.num_classes, fast_cpu=False)
    if found != kind:
        raise CheckpointError(f"{path} is {found.description}; {flag} takes {what}")
    return net


def load_float(args):
    return load(args, args.float_checkpoint, CheckpointKind.FLOAT, "--float_checkpoint",
                "a float checkpoint (ghostnet-final.ckpt of a float run)")


def calibration_path(args):
    path = args.calib_dataset_path or os.path.join(os.path.dirname(os.path.abspath(args.dataset_path)),
                                                   "train.mindrecord")
    if not os.path.isfile(path):
        raise DatasetError(f"no {path} to calibrate on: pass --calib_dataset_path (training data), or "
                           "--int8_checkpoint")
    return path


def load_int8(args):
    if args.int8_checkpoint:
        return load(args, args.int8_checkpoint, CheckpointKind.INT8, "--int8_checkpoint",
                    "an int8 checkpoint (ghostnet-int8.ckpt of train.py --quant)")
    path = calibration_path(args)
    check_num_classes(path, args.num_classes)
    data = create_dataset(path, train=False, image_size=args.image_size, batch_size=args.batch_size,
                          num_workers=args.num_workers)
    net = prepare(load_float(args))
    calibrate(net, batches(data, path), args.calib_batches)
    return convert(net)


def first_batches(dataset, path, count):
    found = []
    for images, _ in batches(dataset, path, output_numpy=True):
        found.append(images)
        if len(found) == count:
            break
    if not found:
        raise DatasetError(f"{path} holds no images")
    return found


def finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def main(args):
    check_at_least_one(batches=args.batches, calib_batches=args.calib_batches, batch_size=args.batch_size,
                       image_size=args.image_size, num_classes=args.num_classes, num_workers=args.num_workers,
                       top=args.top)
    set_device(args.device_target, graph_mode=False)
    check_num_classes(args.dataset_path, args.num_classes)
    with output_folder(args.output_dir, "--output_dir"):
        return report(args)


def report(args):
    dataset = create_dataset(args.dataset_path, train=False, image_size=args.image_size,
                             batch_size=args.batch_size, num_workers=args.num_workers)
    float_net = load_float(args)
    int8_net = load_int8(args)
    compared = first_batches(dataset, args.dataset_path, args.batches)
    logger.info("comparing %d layers on %d batches of %s", len(float_net.conv_bn_pairs()) + 1, len(compared),
                args.dataset_path)
    rows = quantization_report(float_net, int8_net, compared)

    table = format_table(rows)
    base = os.path.join(args.output_dir, REPORT_NAME)
    source = args.int8_checkpoint or f"calibrated here on {args.calib_batches} batches of {calibration_path(args)}"
    write_text(base + ".txt", f"# {args.float_checkpoint} against {source}, {len(compared)} batches of "
                              f"{args.dataset_path}; SQNR in dB, worst layer first\n{table}\n")
    content = {"float_checkpoint": os.path.abspath(args.float_checkpoint), "int8": source,
               "dataset": os.path.abspath(args.dataset_path), "batches": len(compared),
               "layers": [{k: finite_or_none(v) for k, v in row.as_dict().items()} for row in rows]}
    write_text(base + ".json", json.dumps(content, indent=1) + "\n")
    written = [base + ".txt", base + ".json"]
    try:
        written.append(draw_quantization_report(rows, base + ".png"))
    except MissingPackageError as err:
        logger.warning("no %s.png: %s", REPORT_NAME, err)
    print("\n".join(table.splitlines()[:args.top + 1]))
    print(f"report: {', '.join(written)}")
    return rows


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
