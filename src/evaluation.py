"""Top-1 / top-5 accuracy over a whole eval dataset, every sample counted once, the confusion
matrix, and the per-class report eval.py writes with --report_dir."""
import logging
import time

import mindspore as ms
import numpy as np

from src.deploy.predictors import MindSporePredictor
from src.dataset import batches
from src.errors import DatasetError

logger = logging.getLogger(__name__)


def predict_logits(model, dataset, dataset_path="dataset", log_progress=True):
    """Yield ``(logits, labels)`` per batch of ``dataset`` (images, labels).

    ``model``: a MindSpore cell, or any ``predict(images) -> logits`` of src/deploy/predictors.py.
    """
    predict = MindSporePredictor(model) if isinstance(model, ms.nn.Cell) else model
    num_batches = dataset.get_dataset_size()
    log_every = max(1, num_batches // 10)
    seen, start = 0, time.time()
    step = 0
    for images, labels in batches(dataset, dataset_path, output_numpy=True):
        logits = predict(images)
        seen += images.shape[0]
        step += 1
        if log_progress and (step % log_every == 0 or step == num_batches):
            logger.info("eval %d/%d batches, %d images (%.1f images/s)", step, num_batches,
                        seen, seen / max(time.time() - start, 1e-9))
        yield logits, labels


def evaluate(model, dataset, dataset_path="dataset", log_progress=True):
    """Return ``{"top1", "top5", "samples", "confusion"}`` (``model`` as for predict_logits);
    ``confusion[i, j]``: the samples of class i predicted as j."""
    top1 = top5 = total = 0
    confusion = None
    for logits, labels in predict_logits(model, dataset, dataset_path, log_progress):
        num_classes = logits.shape[1]
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise DatasetError(f"{dataset_path} holds label {int(outside.max())} but the network has "
                               f"{num_classes} classes (labels 0..{num_classes - 1}); evaluate with the "
                               "checkpoint trained on this data, or convert the data again")
        k = min(5, num_classes)
        best = np.argsort(-logits, axis=1)[:, :k]
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(axis=1).sum())
        total += len(labels)
        if confusion is None:
            confusion = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(confusion, (labels, best[:, 0]), 1)
    if total == 0:
        raise DatasetError(f"{dataset_path} holds no samples")
    return {"top1": top1 / total, "top5": top5 / total, "samples": total, "confusion": confusion}


def class_report(confusion, names, most_confused=10):
    """Per-class accuracy and the most confused pairs of a confusion matrix (rows: true class).

    Returns ``{"classes": [{name, samples, correct, accuracy}], "most_confused": [{true,
    predicted, count, share}]}``: ``share`` is the count over the true class's samples; pairs
    are sorted by count, then share; a class without samples has accuracy None.
    """
    confusion = np.asarray(confusion)
    if confusion.shape != (len(names), len(names)):
        raise ValueError(f"{len(names)} names for a {confusion.shape} confusion matrix")
    totals = confusion.sum(axis=1)
    classes = [{"name": name, "samples": int(totals[i]), "correct": int(confusion[i, i]),
                "accuracy": float(confusion[i, i] / totals[i]) if totals[i] else None}
               for i, name in enumerate(names)]
    pairs = [{"true": names[i], "predicted": names[j], "count": int(confusion[i, j]),
              "share": float(confusion[i, j] / totals[i])}
             for i, j in zip(*np.nonzero(confusion)) if i != j]
    pairs.sort(key=lambda p: (-p["count"], -p["share"], p["true"], p["predicted"]))
    return {"classes": classes, "most_confused": pairs[:most_confused]}
