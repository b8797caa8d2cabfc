"""Evaluate a GhostNet checkpoint on an Oxford-IIIT Pet MindRecord.

    python eval.py --dataset_path OUT_DIR/test.mindrecord --checkpoint_path CKPT
    python eval.py --dataset_path OUT_DIR/test.mindrecord --checkpoint_path CKPT_OR_ONNX --backend onnxruntime

prints the original package's line ``result: {'acc': 0.xxxx} ckpt= PATH`` and then the
top-5 accuracy and sample count. With ``--backend onnxruntime`` (or ``openvino``) a checkpoint
is turned into ONNX in memory (int8 checkpoints into the int8 QDQ model export.py writes).
"""
import argparse
import logging

from src.cli import (add_backend_argument, add_device_argument, add_network_arguments, run_script,
                     set_device)
from src.config import check_at_least_one
from src.dataset import check_num_classes, create_dataset
from src.deploy.predictors import create_predictor
from src.evaluation import evaluate

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
    return parser


def main(args):
    check_at_least_one(batch_size=args.batch_size, image_size=args.image_size, num_classes=args.num_classes,
                       num_workers=args.num_workers)
    if args.backend == "mindspore":
        set_device(args.device_target)
    check_num_classes(args.dataset_path, args.num_classes)
    dataset = create_dataset(args.dataset_path, train=False, image_size=args.image_size,
                             batch_size=args.batch_size, num_workers=args.num_workers)
    predictor = create_predictor(args.backend, args.checkpoint_path, args.width, args.num_classes,
                                 args.image_size, args.quant)
    logger.info("evaluating %s", predictor.description)
    result = evaluate(predictor, dataset, args.dataset_path)
    print(f"result: {{'acc': {result['top1']:.4f}}} ckpt= {args.checkpoint_path}")
    print(f"top5: {result['top5']:.4f} samples: {result['samples']}")
    return result


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
