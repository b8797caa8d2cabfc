"""A small synthetic Oxford-IIIT Pet folder (official layout, real JPEG files) made with PIL.

Each class has its own hue and stripe direction, so a few epochs learn it. Used by the tests
and the quick start; everything it prints says the data is synthetic.
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


def make_sample_pets(root, num_classes=4, train_per_class=12, test_per_class=5, size=(96, 128),
                     awkward_files=True, seed=0):
    """Write ``root/images/*.jpg`` and ``root/annotations/{trainval,test}.txt``.

    With ``awkward_files`` the test split also lists a PNG under a .jpg name, a CMYK JPEG,
    a grayscale JPEG (all three readable), a truncated JPEG and an entry without an image
    (both to be skipped). Returns ``{"train": n, "test": n, "unreadable": [...], "absent": [...]}``.
    """
    if not 1 <= num_classes <= len(PETS_BREEDS):
        raise DatasetError(f"num_classes must be in [1, {len(PETS_BREEDS)}], got {num_classes}")
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
                class_image(label, num_classes, rng, size).save(
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
            image = class_image(label, num_classes, rng, size)
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
    parser.add_argument("--num_classes", type=int, default=6, help="breeds (at most 37)")
    parser.add_argument("--train_per_class", type=int, default=24, help="trainval images per breed")
    parser.add_argument("--test_per_class", type=int, default=10, help="test images per breed")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def main(args):
    made = make_sample_pets(args.output_dir, args.num_classes, args.train_per_class, args.test_per_class,
                            seed=args.seed)
    logger.info("SYNTHETIC sample set (not real pets: coloured stripes, one hue per breed) in %s: "
                 "%d trainval and %d test images of %d breeds, plus awkward files the converter "
                 "must handle (PNG, CMYK, grayscale, truncated, missing)",
                 args.output_dir, made["train"], made["test"], args.num_classes)


if __name__ == "__main__":
    run_script(main, get_args_parser(), logger)
