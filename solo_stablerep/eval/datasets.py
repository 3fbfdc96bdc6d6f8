"""The labelled data sets of the transfer tables, read from local disk (nothing is downloaded).

A data set is named by a *spec*: ``digits``; ``imagefolder:PATH``; or ``NAME:ROOT`` for the
torchvision data sets of the fine-grained tables, with ROOT the folder torchvision's class reads
(the one you would pass as ``root=``), in torchvision's on-disk layout:

====================  ===============================  =======================  ===============
name                  torchvision class                splits (train/val/test)  metric
====================  ===============================  =======================  ===============
``aircraft``          FGVCAircraft (variants)          train / val / test       mean per class
``caltech101``        Caltech101's folders, with       30 per class (drawn as   mean per class
                      BACKGROUND_Google (102 classes)  the authors) / - / rest
``cars``              StanfordCars                     train / - / test         top-1
``cifar10``           CIFAR10                          train / - / test         top-1
``cifar100``          CIFAR100                         train / - / test         top-1
``dtd``               DTD (partition 1)                train / val / test       top-1
``flowers102``        Flowers102                       train / val / test       mean per class
``food101``           Food101                          train / - / test         top-1
``pets``              OxfordIIITPet                    trainval / - / test      mean per class
``sun397``            SUN397 + ``Training_01.txt`` /   train / - / test         top-1
                      ``Testing_01.txt`` in ROOT/SUN397
``voc2007``           VOCDetection (2007)              train / val / test       11-point mAP
====================  ===============================  =======================  ===============

(``-``: no validation split; the linear probe holds out 20 % of train.) VOC2007 is multi-label: an
image is positive for a class when it has a non-difficult object of it (the classification
labels of the VOC devkit, with "difficult only" counted negative as the protocol's authors do).

``imagefolder:PATH`` reads ``PATH/train``, ``PATH/test`` and, when present, ``PATH/val``, each
with one folder per class (the same classes in every split); top-1. ``digits`` is scikit-learn's
1,797 handwritten 8×8 scans (shipped inside scikit-learn), split in halves per class (seed 0).

Every split yields (RGB PIL image, target); :func:`image_transform` is the protocol's transform.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from solo_stablerep.data.index import IMAGE_EXTENSIONS
from solo_stablerep.errors import EvalError, first_line

CALTECH_TRAIN_PER_CLASS = 30
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


class Split:
    """One split: ``len``, ``labels`` (without decoding an image), ``image(i)`` and ``describe(i)``
    (the file behind item i, for error messages)."""

    def __init__(
        self,
        labels: np.ndarray,
        load: Callable[[int], Image.Image],
        describe: Callable[[int], str],
    ):
        self.labels = labels
        self._load = load
        self.describe = describe

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        try:
            return self._load(index).convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:  # PIL's decode errors
            raise EvalError(f"cannot decode image {self.describe(index)}: {error}") from None


@dataclass
class EvalDataset:
    spec: str
    name: str
    metric: str
    splits: dict[str, Split]
    identity: dict  # what makes its images what they are (for the feature cache key)

    @property
    def multilabel(self) -> bool:
        return self.metric == "map11"


def image_transform(image_size: int, mean, std):
    """The protocol's transform: bicubic resize of the short side to ``image_size``, centre crop,
    tensor, normalisation. No augmentation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


# ------------------------------------------------------------------------------------ digits


def _digits(spec: str, root: str | None) -> EvalDataset:
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)  # ink counts 0..16
    train, test = train_test_split(
        np.arange(len(pixels)), test_size=0.5, random_state=0, stratify=digits.target
    )

    def split(rows):
        return Split(
            digits.target[rows],
            lambda i: Image.fromarray(pixels[rows[i]], mode="L"),
            lambda i: f"digits item {rows[i]}",
        )

    identity = {"name": "digits", "sklearn": sklearn.__version__}
    return EvalDataset(
        spec, "digits", "top1", {"train": split(train), "test": split(test)}, identity
    )


# ------------------------------------------------------------------------------- imagefolder


def _image_folder(spec: str, root: str | None) -> EvalDataset:
    if not root:
        raise EvalError(f"{spec}: give the folder, imagefolder:PATH")
    base = Path(root)
    if not (base / "train").is_dir() or not (base / "test").is_dir():
        raise EvalError(f"{spec}: {base} needs train/ and test/ class folders (val/ optional)")
    names = ["train", "test"] + (["val"] if (base / "val").is_dir() else [])
    classes = sorted(entry.name for entry in os.scandir(base / "train") if entry.is_dir())
    if not classes:
        raise EvalError(f"{spec}: {base / 'train'} has no class folders")
    fingerprint = hashlib.sha256()
    splits = {}
    for name in names:
        found = sorted(entry.name for entry in os.scandir(base / name) if entry.is_dir())
        if found != classes:
            differ = sorted(set(found) ^ set(classes))
            raise EvalError(
                f"{spec}: {name}/ and train/ have different class folders ({', '.join(differ[:5])}"
                f"{', ...' if len(differ) > 5 else ''}): every split needs the same classes"
            )
        paths, labels = [], []
        for label, cls in enumerate(classes):
            for entry in sorted(os.scandir(base / name / cls), key=lambda e: e.name):
                if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    stat = entry.stat()
                    item = f"{name}/{cls}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n"
                    fingerprint.update(item.encode())
                    paths.append(entry.path)
                    labels.append(label)
        if not paths:
            raise EvalError(f"{spec}: {base / name} has no images")
        splits[name] = Split(
            np.asarray(labels), lambda i, p=paths: Image.open(p[i]), lambda i, p=paths: p[i]
        )
    identity = {
        "name": "imagefolder",
        "root": str(base.resolve()),
        "files": fingerprint.hexdigest(),
    }
    return EvalDataset(spec, f"imagefolder:{base.name}", "top1", splits, identity)


# ------------------------------------------------------------------------ torchvision sets


def _files_of(dataset) -> list:
    """The image paths of a torchvision data set, by the attribute its class keeps them in."""
    for attribute in ("_image_files", "_images", "_samples", "samples"):
        files = getattr(dataset, attribute, None)
        if files is not None:
            return [f[0] if isinstance(f, tuple) else f for f in files]
    return []


def _torchvision_split(dataset, labels) -> Split:
    files = _files_of(dataset)
    return Split(
        np.asarray(labels),
        lambda i: dataset[i][0],
        lambda i: str(files[i]) if files else f"item {i} of {type(dataset).__name__}",
    )


def _labels_of(dataset) -> list:
    for attribute in ("_labels", "targets"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return list(labels)
    return [target for _, target in getattr(dataset, "_samples", None) or dataset.samples]


def _subset(dataset, rows, labels) -> Split:
    files = _files_of(dataset)
    return Split(
        np.asarray(labels)[rows],
        lambda i: dataset[int(rows[i])][0],
        lambda i: str(files[int(rows[i])]) if files else f"item {rows[i]}",
    )


def _open(constructor, spec, **kwargs):
    try:
        return constructor(**kwargs)  # download defaults to False
    except (RuntimeError, FileNotFoundError, OSError) as error:
        raise EvalError(
            f"{spec}: {first_line(error)} (the data set must already be on disk in "
            "torchvision's layout: nothing is downloaded)"
        ) from None


def _split_sets(constructor, split_names: dict[str, str], **kwargs):
    def build(spec: str, root: str) -> dict[str, Split]:
        opened = {
            ours: _open(constructor, spec, root=root, split=theirs, **kwargs)
            for ours, theirs in split_names.items()
        }
        # DTD's classes are those its split file names: label by class name where there are names
        named = all(hasattr(dataset, "classes") for dataset in opened.values())
        names = (
            sorted({name for dataset in opened.values() for name in dataset.classes})
            if named
            else []
        )
        splits = {}
        for ours, dataset in opened.items():
            labels = np.asarray(_labels_of(dataset))
            if named:
                labels = np.asarray([names.index(name) for name in dataset.classes])[labels]
            splits[ours] = _torchvision_split(dataset, labels)
        return splits

    return build


def _cifar(constructor):
    def build(spec: str, root: str) -> dict[str, Split]:
        splits = {}
        for ours, train in (("train", True), ("test", False)):
            dataset = _open(constructor, spec, root=root, train=train)
            splits[ours] = Split(
                np.asarray(dataset.targets),
                lambda i, d=dataset: Image.fromarray(d.data[i]),
                lambda i, n=ours: f"{spec} {n} item {i}",
            )
        return splits

    return build


def _caltech101(spec: str, root: str) -> dict[str, Split]:
    """The authors' split (SynCLR's ``eval/downstreams/caltech101.py``; VTAB's Caltech-101 also
    has the 102 classes): the class folders of ``ROOT/caltech101/101_ObjectCategories`` read as
    torchvision's ``ImageFolder`` reads them, BACKGROUND_Google included (102 classes, sorted
    names); per class in that order, 30 training items drawn *with replacement* by numpy's legacy
    generator seeded 0 (``np.random.seed(0)``, ``np.random.choice``), sorted, duplicates kept;
    test: every item never drawn."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    base = Path(root) / "caltech101" / "101_ObjectCategories"
    if not base.is_dir():
        raise EvalError(
            f"{spec}: no {base} (Caltech-101 in torchvision's layout: "
            "ROOT/caltech101/101_ObjectCategories/<category>/image_0001.jpg ...)"
        )
    categories = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
    paths, labels = [], []
    for label, category in enumerate(categories):
        for folder, _, names in sorted(os.walk(base / category, followlinks=True)):
            for name in sorted(names):
                if name.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(folder, name))
                    labels.append(label)
    labels = np.asarray(labels)
    empty = [c for i, c in enumerate(categories) if not (labels == i).any()]
    if empty:
        raise EvalError(f"{spec}: no images in {base / empty[0]}")
    rng = np.random.RandomState(0)  # the authors' np.random.seed(0): the same stream
    train = np.concatenate(
        [
            np.sort(rng.choice(np.flatnonzero(labels == c), CALTECH_TRAIN_PER_CLASS))
            for c in range(len(categories))
        ]
    )
    test = np.setdiff1d(np.arange(len(labels)), train)

    def split(rows):
        return Split(labels[rows], lambda i: Image.open(paths[rows[i]]), lambda i: paths[rows[i]])

    return {"train": split(train), "test": split(test)}


def _sun397(spec: str, root: str) -> dict[str, Split]:
    from torchvision.datasets import SUN397

    dataset = _open(SUN397, spec, root=root)
    base = Path(dataset._data_dir)
    index = {str(path.relative_to(base)): i for i, path in enumerate(dataset._image_files)}
    splits = {}
    for ours, file_name in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        partition = base / file_name
        if not partition.is_file():
            raise EvalError(
                f"{spec}: no {partition}: put SUN397's partition files (Training_01.txt, "
                "Testing_01.txt) there"
            )
        rows = []
        for line in partition.read_text().split():
            relative = line.lstrip("/")
            if relative not in index:
                raise EvalError(f"{partition}: {line} is not an image of {base}")
            rows.append(index[relative])
        splits[ours] = _subset(dataset, np.asarray(rows), dataset._labels)
    return splits


def _voc2007(spec: str, root: str) -> dict[str, Split]:
    from torchvision.datasets import VOCDetection

    splits = {}
    for ours in ("train", "val", "test"):
        dataset = _open(VOCDetection, spec, root=root, year="2007", image_set=ours)
        targets = np.zeros((len(dataset), len(VOC_CLASSES)), dtype=np.int64)
        for i, annotation_file in enumerate(dataset.annotations):
            for name in _voc_positives(dataset, annotation_file):
                targets[i, VOC_CLASSES.index(name)] = 1
        splits[ours] = Split(
            targets,
            lambda i, d=dataset: Image.open(d.images[i]),
            lambda i, d=dataset: d.images[i],
        )
    return splits


def _voc_positives(dataset, annotation_file) -> list[str]:
    """The classes of an annotation's objects that are not marked difficult; a one-line
    :class:`EvalError` naming the file when it is not a VOC annotation."""
    from xml.etree.ElementTree import parse

    try:
        annotation = dataset.parse_voc_xml(parse(annotation_file).getroot())["annotation"]
        objects = annotation.get("object", [])
        objects = objects if isinstance(objects, list) else [objects]
        names = [obj["name"] for obj in objects if obj.get("difficult", "0") == "0"]
    except (OSError, SyntaxError, KeyError, TypeError, AttributeError) as error:  # ParseError too
        reason = f"no {error}" if isinstance(error, KeyError) else first_line(error)
        raise EvalError(
            f"{annotation_file}: not a VOC annotation ({reason}): restore it from the VOC2007 "
            "archive"
        ) from None
    unknown = sorted(set(names) - set(VOC_CLASSES))
    if unknown:
        raise EvalError(
            f"{annotation_file}: object class {unknown[0]!r} is none of VOC's 20: restore the file "
            "from the VOC2007 archive"
        )
    return names


def _dtd(spec: str, root: str) -> dict[str, Split]:
    """DTD's partition 1, its split files checked first: torchvision reads each line as
    ``CLASS/IMAGE`` and fails on any other without naming it."""
    from torchvision.datasets import DTD

    labels = Path(root) / "dtd" / "dtd" / "labels"
    for split in ("train", "val", "test"):
        path = labels / f"{split}1.txt"
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, start=1):
                    if len(line.strip().split("/")) != 2:
                        raise EvalError(
                            f"{path}:{number}: {line.strip()!r} is not CLASS/IMAGE, as every line "
                            "of DTD's split files: restore the file from the DTD archive"
                        )
    return _split_sets(DTD, {"train": "train", "val": "val", "test": "test"}, partition=1)(
        spec, root
    )


def _torchvision_builders() -> dict[str, tuple]:
    """name -> (builder(spec, root) -> splits, metric)."""
    from torchvision import datasets as tv

    three = {"train": "train", "val": "val", "test": "test"}
    two = {"train": "train", "test": "test"}
    return {
        "aircraft": (
            _split_sets(tv.FGVCAircraft, three, annotation_level="variant"),
            "mean_per_class",
        ),
        "caltech101": (_caltech101, "mean_per_class"),
        "cars": (_split_sets(tv.StanfordCars, two), "top1"),
        "cifar10": (_cifar(tv.CIFAR10), "top1"),
        "cifar100": (_cifar(tv.CIFAR100), "top1"),
        "dtd": (_dtd, "top1"),
        "flowers102": (_split_sets(tv.Flowers102, three), "mean_per_class"),
        "food101": (_split_sets(tv.Food101, two), "top1"),
        "pets": (
            _split_sets(
                tv.OxfordIIITPet, {"train": "trainval", "test": "test"}, target_types="category"
            ),
            "mean_per_class",
        ),
        "sun397": (_sun397, "top1"),
        "voc2007": (_voc2007, "map11"),
    }


TORCHVISION_SETS = (
    "aircraft", "caltech101", "cars", "cifar10", "cifar100", "dtd", "flowers102", "food101", "pets",
    "sun397", "voc2007",
)  # fmt: skip
KNOWN = ("digits", "imagefolder") + TORCHVISION_SETS


def open_dataset(spec: str) -> EvalDataset:
    """The data set named by ``spec`` (module docstring); a one-line :class:`EvalError` for an
    unknown name, a missing root or split, or class folders that differ between splits."""
    name, _, root = spec.partition(":")
    if name == "digits":
        return _digits(spec, root)
    if name == "imagefolder":
        return _image_folder(spec, root)
    if name not in TORCHVISION_SETS:
        raise EvalError(
            f"unknown data set {name!r}: known ones are {', '.join(KNOWN)} "
            "(written digits, imagefolder:PATH or NAME:ROOT)"
        )
    if not root:
        raise EvalError(f"{spec}: give the folder it is in, {name}:ROOT")
    if not Path(root).is_dir():
        raise EvalError(f"{spec}: no folder {root}")
    build, metric = _torchvision_builders()[name]
    splits = build(spec, root)
    sizes = {split: len(items) for split, items in splits.items()}
    identity = {"name": name, "root": str(Path(root).resolve()), "sizes": sizes}
    return EvalDataset(spec, name, metric, splits, identity)
