"""Classify image files with a GhostNet checkpoint or ONNX model: top-5 breeds with probabilities.

    python classify.py --checkpoint_path CKPT_OR_ONNX cat.jpg dog.png [--backend onnxruntime]
    python classify.py --checkpoint_path CKPT_OR_ONNX my_pictures/

Images go through the eval pipeline's resize, centre crop and normalisation; any format PIL
reads works (JPEG, PNG, ...); a folder stands for the image files in it, sorted. Every
readable picture is classified; each one that cannot be read is named, and the exit code is
then 2. Pictures are read, classified and printed --batch_size at a time, so a folder of any
size takes the memory of one batch, and long runs log their progress. Breed names come from --class_names, else from the class_names.txt that train.py and
export.py put beside their checkpoints and models.
"""
import argparse
import logging
import os
import time

import numpy as np
from PIL import Image

from src.cli import (add_backend_argument, add_device_argument, add_network_arguments, run_script,
                     set_device)
from src.config import check_at_least_one
from src.dataset import CLASS_NAMES_FILE, load_image, read_class_names, read_names_file
from src.deploy.predictors import create_predictor
from src.errors import DatasetError

logger = logging.getLogger("classify")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files to classify, or folders of them")
    parser.add_argument("--checkpoint_path", required=True,
                        help="checkpoint (.ckpt: float or int8), or an .onnx model with --backend onnxruntime")
    add_backend_argument(parser)
    parser.add_argument("--class_names", default=None,
                        help=f"one class name a line (default: the {CLASS_NAMES_FILE} beside --checkpoint_path)")
    parser.add_argument("--top_k", type=int, default=5, help="how many classes to print per image")
    parser.add_argument("--image_size", type=int, default=224, help="side of the centre crop")
    add_network_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    add_device_argument(parser)
    return parser


def class_names(args, num_classes):
    if args.class_names:
        if not os.path.isfile(args.class_names):
            raise DatasetError(f"class names file not found: {args.class_names}")
        names = read_names_file(args.class_names)
    else:
        names = read_class_names(args.checkpoint_path)
        if names is None:
            logger.warning("no %s beside %s (pass --class_names OUT_DIR/%s): printing class numbers",
                           CLASS_NAMES_FILE, args.checkpoint_path, CLASS_NAMES_FILE)
            return [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DatasetError(f"{args.class_names or CLASS_NAMES_FILE} names {len(names)} classes but the "
                           f"model has {num_classes}; pass the file written with this model's data")
    return names


def image_suffixes():
    """File name suffixes of the formats PIL can open (.jpg, .png, ...)."""
    Image.init()
    return tuple(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def image_files(paths):
    """``paths`` with each folder replaced by the image files in it (sorted by name)."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        suffixes = image_suffixes()
        found = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(suffixes) and not name.startswith(".")
                       and os.path.isfile(os.path.join(path, name)))
        if not found:
            raise DatasetError(f"{path} holds no image files (.jpg, .png, ... that PIL reads); "
                               "pass image files or a folder of them")
        files += found
    return files


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def main(args):
    check_at_least_one(top_k=args.top_k, image_size=args.image_size, batch_size=args.batch_size,
                       num_classes=args.num_classes)
    files = image_files(args.images)
    classifier = Classifier(args)
    failed, results = [], []
    progress = Progress(len(files), args.batch_size)
    # a batch at a time: read, predict, print; memory stays flat in the number of pictures
    for start in range(0, len(files), args.batch_size):
        paths, images = [], []
        for path in files[start:start + args.batch_size]:
            try:
                images.append(load_image(path, args.image_size))
                paths.append(path)
            except DatasetError as err:  # named now, the others are still classified
                logger.error("%s", err)
                failed.append(path)
        if images:
            results += classifier(paths, np.stack(images))
        progress.done(min(start + args.batch_size, len(files)))
    return 2 if failed else results  # run_script exits with 2 after every good file was classified


class Progress:
    """A log line every PROGRESS_SECONDS on runs of more than one batch."""
    PROGRESS_SECONDS = 10

    def __init__(self, total, batch_size):
        self.total, self.started = total, time.time()
        self.shown = self.started
        self.quiet = total <= batch_size

    def done(self, count):
        now = time.time()
        if self.quiet or (now - self.shown < self.PROGRESS_SECONDS and count < self.total):
            return
        self.shown = now
        logger.info("classified %d/%d pictures (%.1f pictures/s)", count, self.total,
                    count / max(now - self.started, 1e-9))


class Classifier:
    """The predictor and the class names, made on the first batch; prints and returns the top-k
    classes of each picture of a batch."""

    def __init__(self, args):
        self.args = args
        self.predictor = self.names = None

    def __call__(self, paths, images):
        args = self.args
        if self.predictor is None:
            if args.backend == "mindspore":
                set_device(args.device_target, graph_mode=False)  # a few images: no graph compilation
            self.predictor = create_predictor(args.backend, args.checkpoint_path, args.width, args.num_classes,
                                              args.image_size)
        logits = self.predictor(images)
        if self.names is None:
            self.names = class_names(args, logits.shape[1])
        probabilities = softmax(logits.astype(np.float64))
        top_k = min(args.top_k, logits.shape[1])
        results = []
        for path, row in zip(paths, probabilities):
            best = np.argsort(-row)[:top_k]
            lines = [path] + [f"  {row[index]:.4f}  {self.names[index]}" for index in best]
            print("\n".join(lines), flush=True)
            results.append([(self.names[index], float(row[index])) for index in best])
        return results


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
