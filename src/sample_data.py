"""A small synthetic Oxford-IIIT Pet folder (official layout, real JPEG files) made with PIL.

Two kinds of picture:

- ``stripes``: each class has its own hue and stripe direction, so a few epochs learn it.
  Used by the tests and the quick start.
- ``hard``: classes one step apart (a sixteenth of the colour circle in hue, or stripes
  against plain), each object drawn with a random outline at a random place, size and angle
  among smaller distractors of the same vocabulary, on a noisy background. Twelve epochs
  from scratch reach about 90% on it, so it shows how well a recipe learns (bench/bench_ab.py).

Everything it prints says the data is synthetic.
"""
import argparse
import colorsys
import logging
import os

import numpy as np
from PIL import Image

from src.cli import run_script
from src.errors import DatasetError

logger = logging.getLogger("sample_data")

PETS_BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees",
    "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher",
    "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
    "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier",
)
CAT_BREEDS = {name for name in PETS_BREEDS if name[0].isupper()}


def class_image(label, num_classes, rng, size=(96, 128)):
    """One image of class ``label``: its hue, its stripe direction, random offsets and noise."""
    height, width = size
    hue = label / num_classes
    base = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255
    dark = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.45)) * 255
    y, x = np.mgrid[0:height, 0:width]
    angle = np.pi * (label % 4) / 4
    phase = rng.uniform(0, 2 * np.pi)
    stripes = (np.sin((x * np.cos(angle) + y * np.sin(angle)) / 5.0 + phase) > 0)[..., None]
    image = np.where(stripes, base, dark) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


# The hard kind: a class is one (hue, pattern) pair. Neighbouring hues are a sixteenth of the
# colour circle apart and each picture's hue jitters by almost half of that; the outline is
# random (it carries no information), and distractors take any hue and pattern.
HARD_HUES = 8
HARD_HUE_STEP = 1 / 16
HARD_HUE_JITTER = 0.03
HARD_PATTERNS = ("stripes", "plain")
HARD_OUTLINES = ("ellipse", "square", "triangle", "diamond")
HARD_CLASSES = HARD_HUES * len(HARD_PATTERNS)


def _outline_mask(outline, size, centre, radius, angle):
    """A boolean mask of ``outline`` at ``centre`` with ``radius`` (pixels), turned by ``angle``."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = x - centre[0], y - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
    if outline == "ellipse":
        return u ** 2 + (v / 0.7) ** 2 <= 1
    if outline == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if outline == "diamond":
        return np.abs(u) + np.abs(v) / 0.7 <= 1
    return (v <= 0.5) & (v >= np.sqrt(3) * np.abs(u) - 1)  # triangle


def _pattern(pattern, size, angle, period, rng):
    """A boolean pattern over the whole image, turned by ``angle``, with a random phase."""
    height, width = size
    if pattern == "plain":
        return np.ones(size, bool)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, period)
    return (u % period) < period / 2  # stripes


def _paint(image, attributes, size, centre, radius, rng):
    """Draw one object with ``attributes = (hue, pattern)`` and a random outline onto ``image``, in place."""
    hue, pattern = attributes
    outline = HARD_OUTLINES[rng.integers(len(HARD_OUTLINES))]
    angle = rng.uniform(0, 2 * np.pi)
    mask = _outline_mask(outline, size, centre, radius, angle)
    texture = _pattern(pattern, size, rng.uniform(0, np.pi), max(4.0, radius / 2.5), rng)
    hue = (hue + rng.uniform(-HARD_HUE_JITTER, HARD_HUE_JITTER)) % 1
    light = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 0.95), rng.uniform(0.8, 1.0))) * 255
    dark = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.3, 0.45))) * 255
    image[mask] = np.where(texture[mask][:, None], light, dark)


def hard_attributes(label):
    """``(hue, pattern)`` of class ``label`` (0 .. HARD_CLASSES - 1)."""
    hue, pattern = divmod(label, len(HARD_PATTERNS))
    return hue * HARD_HUE_STEP, HARD_PATTERNS[pattern]


def hard_class_image(label, num_classes, rng, size=(96, 96)):
    """One picture of class ``label`` of the hard kind: the class's object, large, somewhere in
    the picture, with one or two smaller distractors of random attributes, on a noisy
    background of random colour."""
    height, width = size
    side = min(height, width)
    background = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.9))) * 255
    image = np.broadcast_to(background, (height, width, 3)).copy()
    image += rng.normal(0, 15, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    for _ in range(rng.integers(1, 3)):
        other = hard_attributes(int(rng.integers(HARD_CLASSES)))
        _paint(image, other, size, rng.uniform(0, [width, height]), rng.uniform(0.06, 0.1) * side, rng)
    radius = rng.uniform(0.32, 0.44) * side
    centre = rng.uniform(radius * 0.6, [width - radius * 0.6, height - radius * 0.6])
    _paint(image, hard_attributes(label), size, centre, radius, rng)
    image += rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


PICTURE_KINDS = {"stripes": (class_image, (96, 128), len(PETS_BREEDS)),
                 "hard": (hard_class_image, (96, 96), HARD_CLASSES)}


def make_sample_pets(root, num_classes=4, train_per_class=12, test_per_class=5, size=None,
                     awkward_files=True, seed=0, kind="stripes"):
    """Write ``root/images/*.jpg`` and ``root/annotations/{trainval,test}.txt``.

    With ``awkward_files`` the test split also lists a PNG under a .jpg name, a CMYK JPEG,
    a grayscale JPEG (all three readable), a truncated JPEG and an entry without an image
    (both to be skipped). ``kind`` is a key of PICTURE_KINDS; ``size`` (height, width) defaults
    to the kind's. Returns ``{"train": n, "test": n, "unreadable": [...], "absent": [...]}``.
    """
    if kind not in PICTURE_KINDS:
        raise DatasetError(f"unknown kind {kind!r}; choose one of {', '.join(PICTURE_KINDS)}")
    draw, default_size, max_classes = PICTURE_KINDS[kind]
    size = size or default_size
    if not 1 <= num_classes <= max_classes:
        raise DatasetError(f"num_classes must be in [1, {max_classes}] for the {kind} kind, got {num_classes}")
    rng = np.random.default_rng(seed)
    images = os.path.join(root, "images")
    annotations = os.path.join(root, "annotations")
    os.makedirs(images, exist_ok=True)
    os.makedirs(annotations, exist_ok=True)
    lines = {"train": [], "test": []}
    index = 0
    for label in range(num_classes):
        breed = PETS_BREEDS[label]
        species = 1 if breed in CAT_BREEDS else 2
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for _ in range(count):
                index += 1
                name = f"{breed}_{index}"
                draw(label, num_classes, rng, size).save(
                    os.path.join(images, name + ".jpg"), "JPEG", quality=90)
                lines[split].append(f"{name} {label + 1} {species} {label + 1}")
    result = {"train": len(lines["train"]), "test": len(lines["test"]),
              "unreadable": [], "absent": [], "reencoded": []}
    if awkward_files:
        def add(label, kind):
            nonlocal index
            index += 1
            breed = PETS_BREEDS[label]
            name = f"{breed}_{index}"
            path = os.path.join(images, name + ".jpg")
            image = draw(label, num_classes, rng, size)
            if kind == "png":
                image.save(path, "PNG")
                result["reencoded"].append(path)
            elif kind == "cmyk":
                image.convert("CMYK").save(path, "JPEG")
                result["reencoded"].append(path)
            elif kind == "gray":
                image.convert("L").save(path, "JPEG")
            elif kind == "truncated":
                image.save(path, "JPEG")
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)
                result["unreadable"].append(path)
            elif kind == "absent":
                result["absent"].append(path)
            lines["test"].append(f"{name} {label + 1} {1 if breed in CAT_BREEDS else 2} {label + 1}")
            if kind not in ("truncated", "absent"):
                result["test"] += 1

        for i, kind in enumerate(("png", "cmyk", "gray", "truncated", "absent")):
            add(i % num_classes, kind)
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    for split, file in (("train", "trainval.txt"), ("test", "test.txt")):
        with open(os.path.join(annotations, file), "w", encoding="utf-8") as f:
            f.write(header + "\n".join(lines[split]) + "\n")
    return result


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Write a small SYNTHETIC Oxford-IIIT Pet folder (official layout, real JPEGs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder to hold images/ and annotations/")
    parser.add_argument("--kind", default="stripes", choices=tuple(PICTURE_KINDS),
                        help="stripes: one hue and stripe direction per breed, quick to learn; hard: "
                             f"{HARD_CLASSES} classes a step apart, among distractors and noise")
    parser.add_argument("--num_classes", type=int, default=6,
                        help=f"breeds (at most {len(PETS_BREEDS)}; {HARD_CLASSES} for --kind hard)")
    parser.add_argument("--train_per_class", type=int, default=24, help="trainval images per breed")
    parser.add_argument("--test_per_class", type=int, default=10, help="test images per breed")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def main(args):
    made = make_sample_pets(args.output_dir, args.num_classes, args.train_per_class, args.test_per_class,
                            seed=args.seed, kind=args.kind)
    what = ("coloured stripes, one hue per breed" if args.kind == "stripes" else
            "patterned shapes among distractors, classes one attribute apart")
    logger.info("SYNTHETIC sample set (not real pets: %s) in %s: "
                 "%d trainval and %d test images of %d breeds, plus awkward files the converter "
                 "must handle (PNG, CMYK, grayscale, truncated, missing)",
                 what, args.output_dir, made["train"], made["test"], args.num_classes)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
