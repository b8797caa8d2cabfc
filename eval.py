"""Evaluate a GhostNet checkpoint on an Oxford-IIIT Pet MindRecord.

    python eval.py --dataset_path OUT_DIR/test.mindrecord --checkpoint_path CKPT
    python eval.py --dataset_path OUT_DIR/test.mindrecord --checkpoint_path CKPT_OR_ONNX --backend onnxruntime

prints the original package's line ``result: {'acc': 0.xxxx} ckpt= PATH`` and then the
top-5 accuracy and sample count. ``--report_dir DIR`` also writes DIR/eval_report.json
(per-class accuracy, the confusion matrix, the most confused pairs of breeds) and
DIR/confusion.png (a heat map; needs matplotlib: pip install -r requirements-plots.txt). With ``--backend onnxruntime`` (or ``openvino``) a checkpoint
is turned into ONNX in memory (int8 checkpoints into the int8 QDQ model export.py writes).
"""
import argparse
import contextlib
import json
import logging
import os

from src.cli import (add_backend_argument, add_device_argument, add_network_arguments, run_script,
                     set_device)
from src.config import check_at_least_one
from src.dataset import CLASS_NAMES_FILE, check_num_classes, create_dataset, read_class_names
from src.deploy.predictors import create_predictor
from src.errors import MissingPackageError
from src.evaluation import class_report, evaluate
from src.outputs import output_folder, write_text
from src.plots import draw_confusion

logger = logging.getLogger("eval")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset_path", required=True, help="test.mindrecord written by src.dataset")
    parser.add_argument("--checkpoint_path", required=True,
                        help="checkpoint to evaluate (.ckpt), or an .onnx model with --backend onnxruntime")
    add_backend_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch")
    parser.add_argument("--image_size", type=int, default=224, help="side of the centre crop")
    add_network_arguments(parser)
    parser.add_argument("--num_workers", type=int, default=2, help="data loading workers")
    parser.add_argument("--quant", action="store_true",
                        help="require an int8 checkpoint (int8 ones are recognised without it)")
    parser.add_argument("--report_dir", default=None,
                        help="write eval_report.json (per-class accuracy, confusion matrix, most confused "
                             "pairs) and confusion.png there")
    return parser


def main(args):
    check_at_least_one(batch_size=args.batch_size, image_size=args.image_size, num_classes=args.num_classes,
                       num_workers=args.num_workers)
    if args.backend == "mindspore":
        set_device(args.device_target)
    check_num_classes(args.dataset_path, args.num_classes)
    # the report's folder is made first (a bad --report_dir is said before the eval runs), and
    # removed again if the eval fails before writing into it
    report_folder = output_folder(args.report_dir, "--report_dir") if args.report_dir else contextlib.nullcontext()
    with report_folder:
        return evaluate_and_report(args)


def evaluate_and_report(args):
    dataset = create_dataset(args.dataset_path, train=False, image_size=args.image_size,
                             batch_size=args.batch_size, num_workers=args.num_workers)
    predictor = create_predictor(args.backend, args.checkpoint_path, args.width, args.num_classes,
                                 args.image_size, args.quant)
    logger.info("evaluating %s", predictor.description)
    result = evaluate(predictor, dataset, args.dataset_path)
    print(f"result: {{'acc': {result['top1']:.4f}}} ckpt= {args.checkpoint_path}")
    print(f"top5: {result['top5']:.4f} samples: {result['samples']}")
    if args.report_dir:
        write_report(args, result, predictor.description)
    return result


def report_class_names(args, num_classes):
    """The breed names of the dataset's class_names.txt, else the checkpoint's, else numbers."""
    for source in (args.dataset_path, args.checkpoint_path):
        names = read_class_names(source)
        if names is not None and len(names) == num_classes:
            return names
    logger.warning("no %s with %d names beside the dataset or the checkpoint: the report numbers the classes",
                   CLASS_NAMES_FILE, num_classes)
    return [f"class {i}" for i in range(num_classes)]


def write_report(args, result, description):
    """eval_report.json and confusion.png in --report_dir; prints their paths and the most
    confused pairs."""
    confusion = result["confusion"]
    names = report_class_names(args, confusion.shape[0])
    report = class_report(confusion, names)
    content = {"checkpoint": os.path.abspath(args.checkpoint_path), "dataset": os.path.abspath(args.dataset_path),
               "network": description, "backend": args.backend, "top1": result["top1"], "top5": result["top5"],
               "samples": result["samples"], **report, "class_names": names, "confusion": confusion.tolist()}
    json_path = write_text(os.path.join(args.report_dir, "eval_report.json"), json.dumps(content, indent=1) + "\n")
    print(f"report: {json_path}")
    try:
        picture = draw_confusion(confusion, names, os.path.join(args.report_dir, "confusion.png"),
                                 title=f"{os.path.basename(args.checkpoint_path)}: top-1 {result['top1']:.4f}")
        print(f"confusion matrix: {picture}")
    except MissingPackageError as err:
        logger.warning("no confusion.png: %s", err)
    for pair in report["most_confused"][:5]:
        print(f"  {pair['true']} taken for {pair['predicted']}: {pair['count']} "
              f"({pair['share']:.1%} of {pair['true']})")


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
