"""Top-1 / top-5 accuracy over a whole eval dataset, every sample counted once."""
import logging
import time

import mindspore as ms
import numpy as np

from src.deploy.predictors import MindSporePredictor
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
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    step = 0
    while True:
        try:
            images, labels = next(iterator)
        except StopIteration:
            break
        except RuntimeError as err:
            if "Decode" in str(err) or "decode" in str(err):
                raise DatasetError(
                    f"an image inside {dataset_path} cannot be decoded. Rebuild the file with "
                    "`python -m src.dataset --data_root PETS_DIR --output_dir OUT_DIR --overwrite`, "
                    "which re-encodes or skips such images.") from None
            raise
        logits = predict(images)
        seen += images.shape[0]
        step += 1
        if log_progress and (step % log_every == 0 or step == num_batches):
            logger.info("eval %d/%d batches, %d images (%.1f images/s)", step, num_batches,
                        seen, seen / max(time.time() - start, 1e-9))
        yield logits, labels


def evaluate(model, dataset, dataset_path="dataset", log_progress=True):
    """Return ``{"top1": float, "top5": float, "samples": int}`` (``model`` as for predict_logits)."""
    top1 = top5 = total = 0
    for logits, labels in predict_logits(model, dataset, dataset_path, log_progress):
        k = min(5, logits.shape[1])
        best = np.argsort(-logits, axis=1)[:, :k]
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(axis=1).sum())
        total += len(labels)
    if total == 0:
        raise DatasetError(f"{dataset_path} holds no samples")
    return {"top1": top1 / total, "top5": top5 / total, "samples": total}
