import io
import os

import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore.mindrecord import FileWriter
from PIL import Image

from src.dataset import (DatasetError, breed_name, convert_pets, create_dataset, eval_transforms,
                         read_annotations, read_class_names, transforms)
from src.sample_data import make_sample_pets


def labels_of(dataset):
    return np.concatenate([labels for _, labels in dataset.create_tuple_iterator(output_numpy=True)])


def test_conversion_counts_reencodes_and_skips(sample_pets, caplog):
    root, out, made = sample_pets
    assert made["train"] == 48 and made["test"] == 23
    summaries = convert_pets(str(root), str(out / "again"), overwrite=True)
    assert summaries["train"].written == 48
    assert summaries["test"].written == 23
    assert sorted(f for f, _ in summaries["test"].reencoded) == sorted(made["reencoded"])
    skipped = dict(summaries["test"].skipped)
    assert set(skipped) == set(made["unreadable"] + made["absent"])
    assert "not found" in skipped[made["absent"][0]]
    assert "unreadable" in skipped[made["unreadable"][0]]


def test_class_names_come_from_file_names(sample_pets):
    _, out, _ = sample_pets
    assert read_class_names(str(out / "test.mindrecord")) == [
        "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound"]
    assert breed_name("great_pyrenees_103") == "great_pyrenees"


def test_annotations_skip_comments_and_reject_bad_lines(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\n\nbeagle_2 5 2 3\n")
    assert [(a.image, a.label) for a in read_annotations(str(good))] == [("Abyssinian_1", 0), ("beagle_2", 4)]
    bad = tmp_path / "bad.txt"
    bad.write_text("Abyssinian_1 one 1 1\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1"):
        read_annotations(str(bad))


def test_eval_pipeline_counts_every_sample_once(sample_pets):
    _, out, _ = sample_pets
    data = create_dataset(str(out / "test.mindrecord"), train=False, image_size=48, batch_size=7)
    batches = list(data.create_tuple_iterator(output_numpy=True))
    assert [b[0].shape[0] for b in batches] == [7, 7, 7, 2]
    images = batches[0][0]
    assert images.shape == (7, 3, 48, 48) and images.dtype == np.float32
    labels = np.concatenate([b[1] for b in batches])
    assert labels.dtype == np.int32
    # 5 each, plus the readable PNG, CMYK and grayscale files of classes 0, 1 and 2
    assert np.bincount(labels).tolist() == [6, 6, 6, 5]
    # ImageNet normalisation: values centred near 0, not in [0, 255]
    assert -3 < images.mean() < 3 and images.std() < 3


def test_train_pipeline_drops_the_partial_batch_and_augments(sample_pets):
    _, out, _ = sample_pets
    path = str(out / "train.mindrecord")
    ds.config.set_seed(1)
    data = create_dataset(path, train=True, image_size=32, batch_size=10)
    shapes = [images.shape for images, _ in data.create_tuple_iterator(output_numpy=True)]
    assert shapes == [(10, 3, 32, 32)] * 4
    ds.config.set_seed(1)
    first = next(create_dataset(path, train=True, image_size=32, batch_size=48)
                 .create_tuple_iterator(output_numpy=True))
    ds.config.set_seed(2)
    second = next(create_dataset(path, train=True, image_size=32, batch_size=48)
                  .create_tuple_iterator(output_numpy=True))
    assert not np.allclose(first[0], second[0])
    assert sorted(first[1].tolist()) == sorted(second[1].tolist())


def test_shards_are_disjoint_and_cover_everything(tmp_path):
    # one training image per class, so a label identifies a sample
    make_sample_pets(str(tmp_path / "pets"), num_classes=30, train_per_class=1, test_per_class=1,
                     size=(40, 40), awkward_files=False)
    convert_pets(str(tmp_path / "pets"), str(tmp_path / "mr"))
    path = str(tmp_path / "mr" / "train.mindrecord")
    ds.config.set_seed(5)  # every shard shuffles alike, as on every worker of a group
    shards = [set(labels_of(create_dataset(path, train=True, image_size=32, batch_size=1,
                                           num_shards=3, shard_id=k)).tolist())
              for k in range(3)]
    assert all(len(s) == 10 for s in shards)
    assert set.union(*shards) == set(range(30))


def test_original_label_list_column_loads(tmp_path, sample_pets):
    _, out, _ = sample_pets
    from mindspore.mindrecord import FileReader
    reader = FileReader(str(out / "test.mindrecord"))
    rows = [{"image": r["image"], "label_list": r["label"]} for r in reader.get_next()]
    reader.close()
    path = str(tmp_path / "zoo.mindrecord")
    writer = FileWriter(path, 1)
    writer.add_schema({"image": {"type": "bytes"}, "label_list": {"type": "int32"}}, "zoo")
    writer.write_raw_data(rows)
    writer.commit()
    labels = labels_of(create_dataset(path, train=False, image_size=32, batch_size=5))
    assert labels.tolist() == [r["label_list"] for r in rows]


def test_a_mindrecord_without_labels_is_refused(tmp_path):
    path = str(tmp_path / "nolabel.mindrecord")
    writer = FileWriter(path, 1)
    writer.add_schema({"image": {"type": "bytes"}, "target": {"type": "int32"}}, "x")
    writer.write_raw_data([{"image": b"\xff\xd8", "target": 0}])
    writer.commit()
    with pytest.raises(DatasetError, match=r"no 'label' or 'label_list' column"):
        create_dataset(path, train=False)
    with pytest.raises(DatasetError, match="dataset not found"):
        create_dataset(str(tmp_path / "absent.mindrecord"), train=False)


def test_existing_output_needs_overwrite(sample_pets, tmp_path):
    root, _, _ = sample_pets
    convert_pets(str(root), str(tmp_path))
    with pytest.raises(DatasetError, match="--overwrite"):
        convert_pets(str(root), str(tmp_path))
    convert_pets(str(root), str(tmp_path), overwrite=True)


def test_too_many_skipped_fails_and_leaves_nothing(sample_pets, tmp_path):
    root, _, _ = sample_pets
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"2 images skipped, more than --max_skipped 1"):
        convert_pets(str(root), str(out), max_skipped=1)
    assert not out.exists()  # not even the folder it made


def test_sharded_mindrecord_files(sample_pets, tmp_path):
    root, _, _ = sample_pets
    convert_pets(str(root), str(tmp_path), shard_num=2)
    assert {"train.mindrecord0", "train.mindrecord1", "test.mindrecord0.db"} <= set(os.listdir(tmp_path))
    data = create_dataset(str(tmp_path / "test.mindrecord0"), train=False, image_size=32, batch_size=4)
    assert len(labels_of(data)) == 23


def test_the_hard_sample_set_is_seeded_and_gives_every_class_its_own_attributes(tmp_path):
    from src.sample_data import HARD_CLASSES, PICTURE_KINDS, hard_attributes

    assert len({hard_attributes(label) for label in range(HARD_CLASSES)}) == HARD_CLASSES
    files = []
    for copy in ("a", "b"):
        made = make_sample_pets(str(tmp_path / copy), num_classes=HARD_CLASSES, train_per_class=1,
                                test_per_class=1, awkward_files=False, seed=3, kind="hard")
        assert made["train"] == made["test"] == HARD_CLASSES
        images = sorted((tmp_path / copy / "images").iterdir())
        files.append([image.read_bytes() for image in images])
    assert files[0] == files[1]  # the same seed draws the same pictures
    assert len(set(files[0])) == len(files[0])
    with Image.open(sorted((tmp_path / "a" / "images").iterdir())[0]) as image:
        assert image.size[::-1] == PICTURE_KINDS["hard"][1]
    with pytest.raises(DatasetError, match="for the hard kind"):
        make_sample_pets(str(tmp_path / "c"), num_classes=HARD_CLASSES + 1, kind="hard")
    with pytest.raises(DatasetError, match="unknown kind 'blobs'"):
        make_sample_pets(str(tmp_path / "d"), kind="blobs")


def save_sideways(upright_image, path, orientation=6):
    """Store ``upright_image`` as a phone does: pixels turned, an EXIF tag saying how to turn them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    upright_image.transpose(turn[orientation]).save(path, "JPEG", quality=95, exif=exif.tobytes())


def test_photos_with_an_exif_orientation_are_stored_and_classified_upright(tmp_path):
    from mindspore.mindrecord import FileReader
    from src.dataset import load_image

    root = tmp_path / "pets"
    make_sample_pets(str(root), num_classes=2, train_per_class=2, test_per_class=2, size=(40, 64),
                     awkward_files=False)
    names = [line.split()[0] for line in (root / "annotations" / "test.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    upright_files = {}
    for name, orientation in zip(names, (6, 8, 3)):
        path = root / "images" / f"{name}.jpg"
        with Image.open(path) as img:
            picture = img.convert("RGB")
        upright_files[name] = tmp_path / f"{name}-upright.jpg"
        picture.save(upright_files[name], "JPEG", quality=95)
        save_sideways(picture, path, orientation)
        # classify.py's loading: the tagged file gives the upright picture, not a turned one
        np.testing.assert_allclose(load_image(str(path), 32), load_image(str(upright_files[name]), 32), atol=0.35)
    summaries = convert_pets(str(root), str(tmp_path / "out"))
    reasons = {os.path.basename(f)[:-4]: reason for f, reason in summaries["test"].reencoded}
    assert reasons == {names[0]: "EXIF orientation 6", names[1]: "EXIF orientation 8",
                       names[2]: "EXIF orientation 3"}
    reader = FileReader(str(tmp_path / "out" / "test.mindrecord"))
    stored = [Image.open(io.BytesIO(row["image"])).convert("RGB") for row in reader.get_next()]
    reader.close()
    assert len(stored) == len(names)
    for name, image in zip(names[:3], stored):  # the converter keeps the annotation order
        with Image.open(upright_files[name]) as expected:
            assert image.size == expected.size and image.width != image.height
            difference = np.abs(np.asarray(image, np.int16) - np.asarray(expected.convert("RGB"), np.int16))
            assert difference.mean() < 4, name


def test_labels_beyond_the_classes_are_found_with_or_without_a_names_file(tmp_path, sample_pets):
    """A class_names.txt left from other data (4 names, labels 0-5) does not hide the labels."""
    from src.dataset import check_num_classes
    from src.evaluation import evaluate

    _, out, _ = sample_pets
    from mindspore.mindrecord import FileReader
    reader = FileReader(str(out / "test.mindrecord"))
    rows = [{"image": r["image"], "label": int(i % 6)} for i, r in enumerate(reader.get_next())]
    reader.close()
    path = tmp_path / "six.mindrecord"
    writer = FileWriter(str(path), 1)
    writer.add_schema({"image": {"type": "bytes"}, "label": {"type": "int32"}}, "six")
    writer.write_raw_data(rows)
    writer.commit()
    with pytest.raises(DatasetError, match=r"labels up to 5 \(6 classes\) but --num_classes is 4"):
        check_num_classes(str(path), 4)
    (tmp_path / "class_names.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(DatasetError, match=r"labels up to 5 .* names 4: it belongs to other data"):
        check_num_classes(str(path), 4)
    with pytest.raises(DatasetError, match=r"labels up to 5 .* names 4"):
        check_num_classes(str(path), 8)  # a classifier big enough, but the names are still stale

    def four_class_logits(images):  # a stand-in predictor: eval's own guard, past the checks above
        return np.zeros((images.shape[0], 4), np.float32)
    with pytest.raises(DatasetError, match=r"six\.mindrecord holds label [45] but the network has 4 classes"):
        evaluate(four_class_logits, create_dataset(str(path), train=False, image_size=32, batch_size=8),
                 str(path), log_progress=False)


def test_train_and_eval_resizes_filter_what_they_leave_out():
    # a 1-pixel checkerboard has no detail a 64 px image can show: a filtering downscale (PIL's,
    # torchvision's) gives flat grey, sampling a few neighbours (the framework's BILINEAR and
    # BICUBIC, which aliased every photo at 64 px) gives a checkerboard of its own
    rows, cols = np.mgrid[0:375, 0:500]
    board = np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    encoded = io.BytesIO()
    Image.fromarray(board).save(encoded, "JPEG", quality=100)
    jpeg = np.frombuffer(encoded.getvalue(), np.uint8)

    def detail(image):  # mean |Laplacian| of the grey image: 0 for flat, about 500 for a checkerboard
        grey = np.asarray(image, np.float32).mean(axis=-1)
        return np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]).mean()

    crop = transforms(True, 64)[0]
    assert max(detail(crop(jpeg)) for _ in range(10)) < 15
    assert detail(eval_transforms(64)[0](board)) < 15
