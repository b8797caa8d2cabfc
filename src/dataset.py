"""Oxford-IIIT Pet as MindRecord, and the train/eval input pipelines.

    python -m src.dataset --data_root PETS_DIR --output_dir OUT_DIR [--shard_num N] [--overwrite]

reads ``PETS_DIR/images/*.jpg`` and ``PETS_DIR/annotations/{trainval,test}.txt`` and writes
``OUT_DIR/train.mindrecord`` (trainval), ``OUT_DIR/test.mindrecord`` and
``OUT_DIR/class_names.txt`` (one breed a line, line i is label i).
"""
import argparse
import errno
import io
import logging
import os
import shutil
import struct
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision
import numpy as np
from mindspore.communication import GlobalComm, get_group_size, get_rank
from mindspore.dataset.vision import Inter
from mindspore.mindrecord import FileReader, FileWriter
from PIL import Image, ImageOps

from src.cli import run_script
from src.errors import DatasetError, OutputError
from src.outputs import WRITE_ERRNOS, FolderLock, output_folder, why_not_written, write_text

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224
SPLITS = {"train": "trainval.txt", "test": "test.txt"}
CLASS_NAMES_FILE = "class_names.txt"
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}}
LABEL_COLUMNS = ("label", "label_list")  # ours, and the original package's
# Modes MindSpore's JPEG decoder turns into RGB correctly; anything else is re-encoded.
DECODABLE_JPEG_MODES = ("RGB", "L")
# What PIL raises for files it cannot read; DecompressionBombError/Warning: more pixels than
# Image.MAX_IMAGE_PIXELS (the warning is turned into an error, see read_image).
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                           Image.DecompressionBombWarning)
STAGING_PREFIX = ".staging-"
EXIF_ORIENTATION = 0x0112  # the EXIF tag of a photo's rotation or mirroring; 1 is upright
TURNED = range(2, 9)  # the orientations that turn or mirror (0 and 9 occur and mean upright)
RECONVERT = "`python -m src.dataset --data_root PETS_DIR --output_dir OUT_DIR --overwrite`"
# what MindSpore's reader says of a MindRecord file cut short or damaged
UNREADABLE_MINDRECORD = ("Failed to read file", "Invalid file", "Invalid data", "mindrecord file")


# --- conversion ------------------------------------------------------------------------

@dataclass
class Annotation:
    image: str
    label: int


@dataclass
class SplitSummary:
    written: int = 0
    reencoded: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (file, reason)


def read_annotations(path):
    """Parse ``<image> <class_id 1..37> <species> <breed_id>`` lines; ``#`` lines are comments."""
    if not os.path.isfile(path):
        raise DatasetError(f"annotation file not found: {path} (expected the official "
                           "Pets layout: annotations/trainval.txt and annotations/test.txt)")
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            try:
                class_id = int(fields[1])
            except (IndexError, ValueError):
                raise DatasetError(f"{path}:{number}: expected '<image> <class_id> <species> "
                                   f"<breed_id>', got {line!r}") from None
            if class_id < 1:
                raise DatasetError(f"{path}:{number}: class_id {class_id} must be 1 or more")
            entries.append(Annotation(fields[0], class_id - 1))
    return entries


def breed_name(image_name):
    """``Abyssinian_100`` -> ``Abyssinian``; ``american_bulldog_12`` -> ``american_bulldog``."""
    return image_name.rsplit("_", 1)[0]


def class_names_from(annotations, source="the annotations"):
    names = {}
    for entry in annotations:
        names.setdefault(entry.label, breed_name(entry.image))
    if not names:
        raise DatasetError(f"{source} list no images (only comments or blank lines); expected lines "
                           "'<image> <class_id> <species> <breed_id>' of the official Pets layout")
    missing = [i for i in range(max(names) + 1) if i not in names]
    if missing:
        raise DatasetError(f"no image for class_id(s) {[i + 1 for i in missing]} in the annotations")
    return [names[i] for i in range(len(names))]


def read_image(file):
    """Open and fully decode an image (a path or file object) with PIL.

    Raises one of UNREADABLE_IMAGE_ERRORS for what cannot be read: truncated or corrupt files,
    and images over PIL's pixel limit (a DecompressionBombWarning is raised as an error too, so
    that a huge picture is refused before it is decoded).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(file)
        try:
            img.load()  # decodes fully: truncated or corrupt files raise here
        except BaseException:
            img.close()
            raise
    return img


def to_rgb(img):
    """``img`` as 8-bit RGB. 16-bit and 32-bit grayscale (modes I;16, I, F) are scaled by their
    range first, where PIL's own conversion clips at 255 and makes them white: I;16 by 65535; I by
    65535 when its values lie in [0, 65535] (16-bit files read as I), else by its min..max; F by 1
    when its values lie in [0, 1], else by its min..max."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if img.mode.startswith("I;16") or (img.mode == "I" and low >= 0 and high <= 65535):
            low, high = 0.0, 65535.0
        elif img.mode == "F" and low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        scaled = np.round((values - low) * 255.0 / max(high - low, 1e-12))
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def exif_orientation(img):
    """The EXIF orientation tag of ``img`` (1, upright, where it has none)."""
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, SyntaxError, struct.error):  # a damaged EXIF block: taken as upright
        return 1
    return orientation if orientation in TURNED else 1


def upright(img):
    """``img`` turned as its EXIF orientation says (phones store photos sideways with a tag;
    viewers and PIL's ``exif_transpose`` apply it, MindSpore's decoder does not)."""
    if exif_orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except (TypeError, ValueError, SyntaxError, struct.error):  # a damaged EXIF block: as stored
        return img


def load_image_bytes(path):
    """Return ``(jpeg_bytes, reencoded_reason)``; raise one of UNREADABLE_IMAGE_ERRORS for what
    PIL cannot read. What MindSpore's decoder would read wrongly is re-encoded as an upright RGB
    JPEG: other formats and modes, and pictures with an EXIF orientation other than upright."""
    with open(path, "rb") as f:
        raw = f.read()
    with read_image(io.BytesIO(raw)) as img:
        orientation = exif_orientation(img)
        if img.format == "JPEG" and img.mode in DECODABLE_JPEG_MODES and orientation == 1:
            return raw, None
        reason = f"{img.format} {img.mode}" if orientation == 1 else f"EXIF orientation {orientation}"
        out = io.BytesIO()
        to_rgb(upright(img)).save(out, "JPEG", quality=95)
        return out.getvalue(), reason


def _write_split(annotations, images_dir, path, shard_num, summary, progress):

    writer = FileWriter(path, shard_num=shard_num, overwrite=True)
    writer.add_schema(SCHEMA, "oxford_iiit_pet")
    batch = []
    for entry in annotations:
        file = os.path.join(images_dir, entry.image + ".jpg")
        if not os.path.isfile(file):
            summary.skipped.append((file, "listed in the annotations but not found"))
        else:
            try:
                data, reason = load_image_bytes(file)
            except UNREADABLE_IMAGE_ERRORS as err:
                summary.skipped.append((file, f"unreadable: {err}"))
            else:
                if reason:
                    summary.reencoded.append((file, reason))
                batch.append({"image": data, "label": entry.label})
        progress()
        if len(batch) >= 256:
            writer.write_raw_data(batch)
            summary.written += len(batch)
            batch = []
    if batch:
        writer.write_raw_data(batch)
        summary.written += len(batch)
    writer.commit()


def output_files(output_dir, shard_num):
    names = [CLASS_NAMES_FILE]
    for split in SPLITS:
        stems = [f"{split}.mindrecord"] if shard_num == 1 else \
            [f"{split}.mindrecord{i}" for i in range(shard_num)]
        names += [n for stem in stems for n in (stem, stem + ".db")]
    return [os.path.join(output_dir, n) for n in names]


def convert_pets(data_root, output_dir, shard_num=1, overwrite=False, max_skipped=10):
    """Write the MindRecord files and class names; return ``{split: SplitSummary}``.

    Everything is written in a staging folder inside ``output_dir`` and moved into place
    (same file names, as a MindRecord must keep its name) only when both splits succeed. The
    folder is locked for the whole conversion (src/outputs.py); staging folders found there
    were left by killed conversions and are removed.
    """
    images_dir = os.path.join(data_root, "images")
    if not os.path.isdir(images_dir):
        raise DatasetError(f"image folder not found: {images_dir} (download and extract "
                           "images.tar.gz and annotations.tar.gz of Oxford-IIIT Pet into --data_root)")
    if shard_num < 1:
        raise DatasetError(f"--shard_num must be 1 or more, got {shard_num}")
    annotation_files = {split: os.path.join(data_root, "annotations", name) for split, name in SPLITS.items()}
    annotations = {split: read_annotations(path) for split, path in annotation_files.items()}
    names = class_names_from(annotations["train"] + annotations["test"],
                             " and ".join(annotation_files.values()))
    with output_folder(output_dir, "--output_dir", DatasetError), \
            FolderLock(output_dir, "--output_dir", DatasetError):
        remove_stale_staging(output_dir)
        targets = output_files(output_dir, shard_num)
        existing = [t for t in targets if os.path.exists(t)]
        if existing and not overwrite:
            raise DatasetError(f"{existing[0]} already exists; pass --overwrite to replace the output")
        summaries = _convert_locked(annotations, annotation_files, images_dir, output_dir, names, targets,
                                    existing, shard_num, max_skipped)

    for split, summary in summaries.items():
        logger.info("%s: %d images written to %s", split, summary.written,
                    os.path.join(output_dir, f"{split}.mindrecord"))
        for file, reason in summary.reencoded:
            logger.info("  re-encoded as upright RGB JPEG (%s): %s", reason, file)
        for file, reason in summary.skipped:
            logger.warning("  skipped %s: %s", file, reason)
    logger.info("%d classes written to %s", len(names), os.path.join(output_dir, CLASS_NAMES_FILE))
    return summaries


def _images_size(images_dir, annotations):
    """The bytes of the listed images: about what their MindRecord files take."""
    total = 0
    for entries in annotations.values():
        for entry in entries:
            try:
                total += os.path.getsize(os.path.join(images_dir, entry.image + ".jpg"))
            except OSError:
                pass
    return total


def remove_stale_staging(output_dir):
    """Remove the staging folders of killed conversions (called with the folder's lock held, so
    no running conversion owns one)."""
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(path):
            logger.info("removing %s, left by a conversion that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _convert_locked(annotations, annotation_files, images_dir, output_dir, names, targets, existing,
                    shard_num, max_skipped):
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir)
    try:
        total = sum(len(a) for a in annotations.values())
        done, start = [0], time.time()

        def progress():
            done[0] += 1
            if done[0] % 500 == 0 or done[0] == total:
                logger.info("converted %d/%d images (%.0f/s)", done[0], total,
                            done[0] / max(time.time() - start, 1e-9))

        summaries = {}
        for split, entries in annotations.items():
            summaries[split] = SplitSummary()
            path = os.path.join(staging, f"{split}.mindrecord")
            try:
                _write_split(entries, images_dir, path, shard_num, summaries[split], progress)
            except (OSError, RuntimeError) as err:
                if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
                    cause = why_not_written(err, os.path.join(output_dir, split), _images_size(images_dir, annotations))
                elif "free disk" in str(err) or "No space left" in str(err):  # MindRecord's writer
                    cause = why_not_written(OSError(errno.ENOSPC, "no space"), os.path.join(output_dir, split),
                                            _images_size(images_dir, annotations))
                else:
                    raise
                raise OutputError(f"cannot write the MindRecord files in {output_dir}: {cause}; free some "
                                  "space or choose another --output_dir. Nothing was written.") from None
        skipped = [s for summary in summaries.values() for s in summary.skipped]
        if len(skipped) > max_skipped:
            raise DatasetError(
                f"{len(skipped)} images skipped, more than --max_skipped {max_skipped}; first: "
                + "; ".join(f"{f}: {why}" for f, why in skipped[:5])
                + ". Check the download, or raise --max_skipped.")
        for split, summary in summaries.items():
            if summary.written == 0:
                raise DatasetError(
                    f"the {split} split would hold no images ({annotation_files[split]} lists "
                    f"{len(annotations[split])}, {len(summary.skipped)} skipped): check the annotation "
                    "file and the images folder. Nothing was written.")
        with open(os.path.join(staging, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
        for target in existing:
            os.remove(target)
        for target in targets:
            os.replace(os.path.join(staging, os.path.basename(target)), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summaries


def read_class_names(dataset_path):
    """Class names written beside a MindRecord file by the conversion (or copied beside a
    checkpoint or model), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(dataset_path)), CLASS_NAMES_FILE)
    return read_names_file(path) if os.path.isfile(path) else None


def read_names_file(path):
    """The non-empty lines of a class names file (line i names label i)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def copy_class_names(source_file, destination_folder):
    """Copy the class_names.txt beside ``source_file`` (a dataset, checkpoint or model) into
    ``destination_folder`` so that what is written there names its classes; returns the copy or None."""
    names = read_class_names(source_file)
    if names is None:
        return None
    path = os.path.join(destination_folder, CLASS_NAMES_FILE)
    if os.path.abspath(path) != os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(source_file)),
                                                             CLASS_NAMES_FILE)):
        write_text(path, "".join(name + "\n" for name in names))
    return path


def check_num_classes(dataset_path, num_classes):
    """Refuse a classifier smaller than the classes of the dataset: the names of its
    class_names.txt, and the labels themselves (read from the label column, which is small:
    the images are not read), so that a names file left from other data is found too."""
    names = read_class_names(dataset_path)
    if names is not None and len(names) > num_classes:
        raise DatasetError(f"{dataset_path} has {len(names)} classes ({CLASS_NAMES_FILE} beside it) "
                           f"but --num_classes is {num_classes}; pass --num_classes {len(names)}")
    top = max_label(dataset_path)
    if names is not None and top >= len(names):
        raise DatasetError(f"{dataset_path} has labels up to {top} ({top + 1} classes) but the "
                           f"{CLASS_NAMES_FILE} beside it names {len(names)}: it belongs to other data. "
                           "Convert the data again (python -m src.dataset ... --overwrite), which writes both")
    if top >= num_classes:
        raise DatasetError(f"{dataset_path} has labels up to {top} ({top + 1} classes) but --num_classes "
                           f"is {num_classes}; pass --num_classes {top + 1} or more")


def max_label(dataset_path):
    """The largest label in a MindRecord (-1 when it is empty)."""
    label = label_column(dataset_path)
    data = ds.MindDataset(dataset_path, columns_list=[label], shuffle=False)
    top = -1
    for (labels,) in data.batch(4096).create_tuple_iterator(output_numpy=True, num_epochs=1):
        top = max(top, int(labels.max()))
    return top


# --- input pipelines -------------------------------------------------------------------

def pipeline_error(err):
    """The line that says what went wrong in a MindSpore data error: its "[ERROR] ..." line (the
    message refers to it but holds it further down), else the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = next((line for line in lines if line.startswith("[ERROR]")), lines[0] if lines else repr(err))
    return found.removeprefix("[ERROR]").replace("[Internal ERROR]", "").strip().rstrip(".")


def batches(dataset, dataset_path, output_numpy=False):
    """Iterate ``dataset``'s batches (tuples) once; an image that cannot be decoded, or a file
    that cannot be read, ends in a :class:`DatasetError` naming ``dataset_path`` and the fix."""
    iterator = dataset.create_tuple_iterator(output_numpy=output_numpy, num_epochs=1)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as err:
            cause = pipeline_error(err)
            if "decode" in cause.lower():
                raise DatasetError(f"an image inside {dataset_path} cannot be decoded ({cause}). Rebuild "
                                   f"the file with {RECONVERT}, which re-encodes or skips such images.") from None
            if any(words in cause for words in UNREADABLE_MINDRECORD):
                raise DatasetError(f"{dataset_path} cannot be read ({cause}): the file may be cut short or "
                                   f"damaged. Write it again with {RECONVERT}") from None
            raise
        yield batch


def label_column(dataset_path):
    """Check ``dataset_path`` is a MindRecord with an image and a label column; return the label's name."""
    if not os.path.isfile(dataset_path):
        raise DatasetError(f"dataset not found: {dataset_path} "
                           "(make it with `python -m src.dataset --data_root PETS_DIR --output_dir OUT_DIR`)")
    try:
        reader = FileReader(dataset_path)
        columns = set(reader.schema())
        reader.close()
    except Exception as err:  # MindSpore raises several types for a non-MindRecord file
        raise DatasetError(f"{dataset_path} is not a readable MindRecord file ({pipeline_error(err)}): a "
                           "file cut short or damaged, or renamed (a MindRecord must keep the name it was "
                           f"written with). Write it again with {RECONVERT}") from None
    if "image" not in columns:
        raise DatasetError(f"{dataset_path} has no 'image' column (columns: {sorted(columns)})")
    for name in LABEL_COLUMNS:
        if name in columns:
            return name
    raise DatasetError(f"{dataset_path} has no 'label' or 'label_list' column "
                       f"(columns: {sorted(columns)})")


def shard_of_this_process(num_shards=None, shard_id=None):
    """Explicit arguments, else the initialised communication group, else no sharding."""
    if num_shards is not None:
        if shard_id is None or not 0 <= shard_id < num_shards:
            raise DatasetError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        return num_shards, shard_id
    if GlobalComm.INITED and get_group_size() > 1:
        return get_group_size(), get_rank()
    return None, None


# Downscaling interpolations that filter what they leave out, as PIL's (torchvision's) do: the
# framework's BILINEAR and BICUBIC sample a few neighbours only, and a 64 px crop of a 500 px
# photo came out with twice the high-frequency energy of torchvision's, aliased (issue 35).
TRAIN_INTERPOLATION = Inter.AREA
EVAL_INTERPOLATION = Inter.PILCUBIC  # PIL's bicubic, as torchvision's Resize on a PIL image


def transforms(train, image_size):
    if train:
        return [vision.RandomCropDecodeResize(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                              interpolation=TRAIN_INTERPOLATION),
                vision.RandomHorizontalFlip(),
                vision.RandomColorAdjust(brightness=0.4, contrast=0.4, saturation=0.4),
                *to_normalized_chw()]
    return [vision.Decode()] + eval_transforms(image_size)


def to_normalized_chw():
    """ImageNet normalisation of an RGB image (HWC uint8), then HWC -> CHW float32."""
    return [vision.Normalize(mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD]),
            vision.HWC2CHW()]


def eval_transforms(image_size):
    """Resize, centre crop and normalise a decoded RGB image (HWC uint8) to CHW float32."""
    return [vision.Resize(int(image_size * EVAL_RESIZE_RATIO), EVAL_INTERPOLATION),
            vision.CenterCrop(image_size),
            *to_normalized_chw()]


def load_image(path, image_size):
    """One image file (any format PIL reads) as the eval pipeline's CHW float32 array."""
    if not os.path.isfile(path):
        raise DatasetError(f"image not found: {path}")
    try:
        with read_image(path) as image:
            pixels = np.asarray(to_rgb(upright(image)))
    except UNREADABLE_IMAGE_ERRORS as err:
        raise DatasetError(f"{path} is not an image file PIL can read ({err})") from None
    for transform in eval_transforms(image_size):
        pixels = transform(pixels)
    return pixels.astype(np.float32)


def create_dataset(dataset_path, train, image_size=224, batch_size=32, num_workers=2,
                   num_shards=None, shard_id=None):
    """Batches of ``(image float32 NCHW, label int32)``.

    Train: shuffled, augmented, last partial batch dropped, sharded across the group. The
    shuffle and augmentation follow MindSpore's global dataset seed as it is when an iterator
    starts (``mindspore.dataset.config.set_seed``; train.py sets it every epoch).
    Eval: every sample exactly once, the last batch possibly smaller.
    """
    label = label_column(dataset_path)
    num_shards, shard_id = shard_of_this_process(num_shards, shard_id) if train else (num_shards, shard_id)
    data = ds.MindDataset(dataset_path, columns_list=["image", label], shuffle=train,
                          num_shards=num_shards, shard_id=shard_id,
                          num_parallel_workers=num_workers)
    if label != "label":
        data = data.rename(label, "label")
    data = data.map(transforms(train, image_size), input_columns="image",
                    num_parallel_workers=num_workers)
    data = data.map(T.TypeCast(ms.int32), input_columns="label")
    return data.batch(batch_size, drop_remainder=train)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Convert Oxford-IIIT Pet to MindRecord.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_root", required=True,
                        help="Pets folder holding images/ and annotations/")
    parser.add_argument("--output_dir", required=True,
                        help="folder for train.mindrecord, test.mindrecord and class_names.txt")
    parser.add_argument("--shard_num", type=int, default=1, help="MindRecord files per split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    parser.add_argument("--max_skipped", type=int, default=10,
                        help="fail when more images than this are missing or unreadable")
    return parser


def main(args):
    convert_pets(args.data_root, args.output_dir, args.shard_num, args.overwrite, args.max_skipped)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
