"""The data sets: torchvision classes read from fake local roots in their on-disk layouts (nothing
downloaded), image folders, digits, and the one-line errors for bad ones."""

import numpy as np
import pytest
from conftest import write_dtd, write_voc2007
from helpers import write_image_folder
from PIL import Image

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.datasets import KNOWN, VOC_CLASSES, image_transform, open_dataset


def test_dtd_from_a_local_root_in_torchvisions_layout(tmp_path):
    root = write_dtd(tmp_path / "data", per_split=(4, 2, 3))
    dataset = open_dataset(f"dtd:{root}")
    assert dataset.name == "dtd" and dataset.metric == "top1" and not dataset.multilabel
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 12, "val": 6, "test": 9}
    assert dataset.splits["test"].labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    image = dataset.splits["val"].image(0)
    assert image.mode == "RGB" and image.size == (28, 20)
    assert "dtd/dtd/images/banded/banded_val_0000.jpg" in dataset.splits["val"].describe(0)


def test_dtd_labels_follow_class_names_when_a_split_lacks_a_class(tmp_path):
    root = write_dtd(tmp_path / "data")
    labels = root / "dtd" / "dtd" / "labels" / "val1.txt"
    labels.write_text(
        "".join(line + "\n" for line in labels.read_text().split() if not line.startswith("banded"))
    )
    dataset = open_dataset(f"dtd:{root}")
    # val has no 'banded': its 'dotted' is still class 1, as in train
    assert dataset.splits["val"].labels.tolist() == [1, 1, 2, 2]


def test_voc2007_targets_are_multilabel_without_difficult_only_classes(tmp_path):
    root = write_voc2007(tmp_path / "voc", per_split=4)
    dataset = open_dataset(f"voc2007:{root}")
    assert dataset.metric == "map11" and dataset.multilabel
    targets = dataset.splits["train"].labels
    assert targets.shape == (4, 20)
    assert targets[:, VOC_CLASSES.index("cat")].tolist() == [1, 1, 1, 1]
    assert targets[:, VOC_CLASSES.index("dog")].tolist() == [1, 0, 1, 0]
    assert targets[:, VOC_CLASSES.index("bird")].tolist() == [0, 0, 0, 0]  # difficult only
    assert targets.sum() == 6


def test_image_folder_splits_and_transform(tmp_path):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "set" / split, num_classes=3, per_class=2, size=24)
    dataset = open_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert set(dataset.splits) == {"train", "test"} and dataset.splits["train"].labels.tolist() == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    tensor = image_transform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(
        dataset.splits["train"].image(0)
    )
    assert tensor.shape == (3, 16, 16) and tensor.min() >= -2 and tensor.max() <= 2


def test_image_folder_identity_changes_with_its_files(tmp_path):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "set" / split, num_classes=2, per_class=2)
    before = open_dataset(f"imagefolder:{tmp_path / 'set'}").identity
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "test" / "class1" / "extra.png")
    assert open_dataset(f"imagefolder:{tmp_path / 'set'}").identity != before


def test_digits_halves_per_class():
    dataset = open_dataset("digits")
    train, test = dataset.splits["train"], dataset.splits["test"]
    assert len(train) + len(test) == 1797 and abs(len(train) - len(test)) <= 1
    assert np.abs(np.bincount(train.labels) - np.bincount(test.labels)).max() <= 1
    assert train.image(0).size == (8, 8)


@pytest.mark.parametrize(
    "make, spec, message",
    [
        (None, "mnist:/data", "unknown data set 'mnist': known ones are " + ", ".join(KNOWN)),
        (None, "dtd", "give the folder it is in, dtd:ROOT"),
        (lambda p: p.mkdir(), "dtd:{p}", "Dataset not found.*nothing is downloaded"),
        (lambda p: write_image_folder(p / "train"), "imagefolder:{p}", "needs train/ and test/"),
        (
            lambda p: (
                write_image_folder(p / "train", num_classes=3),
                write_image_folder(p / "test", num_classes=2),
            ),
            "imagefolder:{p}",
            "test/ and train/ have different class folders \\(class2\\)",
        ),
    ],
)
def test_bad_data_sets_are_one_line_errors(tmp_path, make, spec, message):
    path = tmp_path / "set"
    if make:
        make(path)
    with pytest.raises(EvalError, match=message) as error:
        open_dataset(spec.format(p=path))
    assert "\n" not in str(error.value)


def test_corrupt_image_is_named(tmp_path):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "set" / split, num_classes=2, per_class=1)
    bad = tmp_path / "set" / "test" / "class1" / "0.png"
    bad.write_bytes(b"not a png")
    dataset = open_dataset(f"imagefolder:{tmp_path / 'set'}")
    with pytest.raises(EvalError, match=f"cannot decode image {bad}"):
        dataset.splits["test"].image(1)


def test_caltech101_follows_the_authors_split_with_the_background_class(tmp_path):
    """SynCLR's split: ImageFolder's 102 classes (BACKGROUND_Google among them), 30 training items
    per class drawn with replacement after np.random.seed(0), the rest for test."""
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    counts = {"BACKGROUND_Google": 45, "Faces": 33, "accordion": 40, "ant": 31}
    for category, count in counts.items():
        (base / category).mkdir(parents=True)
        for i in range(1, count + 1):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(base / category / f"image_{i:04d}.jpg")
    dataset = open_dataset(f"caltech101:{tmp_path}")
    train, test = dataset.splits["train"], dataset.splits["test"]
    assert dataset.metric == "mean_per_class" and set(dataset.splits) == {"train", "test"}

    # the authors' code, as they wrote it: global seed, choice from each class's list of indices
    labels = [c for c, count in enumerate(counts.values()) for _ in range(count)]
    class_rows = {c: [i for i, label in enumerate(labels) if label == c] for c in range(4)}
    np.random.seed(0)
    expected = [i for c in range(4) for i in np.sort(np.random.choice(class_rows[c], 30))]
    expected_test = sorted(set(range(len(labels))) - set(expected))

    assert len(train) == 4 * 30 and train.labels.tolist() == [labels[i] for i in expected]
    assert len(set(expected)) < len(expected)  # drawn with replacement: duplicates kept
    described = [train.describe(i) for i in range(len(train))]
    paths = [
        str(base / c / f"image_{i:04d}.jpg") for c, n in counts.items() for i in range(1, n + 1)
    ]
    assert described == [paths[i] for i in expected]
    assert [test.describe(i) for i in range(len(test))] == [paths[i] for i in expected_test]
    assert test.image(0).size == (8, 8)
