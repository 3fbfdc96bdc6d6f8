"""Fixtures of the evaluation tests: solo-learn-format checkpoints made without training, and
torchvision data sets in their on-disk layouts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_checkpoint(
    folder: Path,
    backbone="resnet18",
    kwargs=None,
    method="simclr",
    dataset="custom",
    seed=0,
    crop_size=32,
) -> Path:
    """A checkpoint as solo-learn's Checkpointer leaves it: ``<name>-ep=0.ckpt`` (a Lightning
    checkpoint's keys, the backbone under ``backbone.``, a projector beside it) and ``args.json``.
    The backbone is solo-learn's own constructor's, with seeded random weights."""
    from torch import nn

    from solo_stablerep._solo import _quiet_imports

    with _quiet_imports():
        from solo.methods.base import BaseMethod
    torch.manual_seed(seed)
    with _quiet_imports():
        model = BaseMethod._BACKBONES[backbone](method, **(kwargs or {}))
    if backbone.startswith("resnet"):
        model.fc = nn.Identity()
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["projector.0.weight"] = torch.randn(8, 8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{method}-handmade-ep=0.ckpt"
    torch.save(
        {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.5", "state_dict": state},
        path,
    )
    args = {
        "name": f"{method}-handmade",
        "method": method,
        "backbone": {"name": backbone, "kwargs": kwargs or {}},
        "data": {"dataset": dataset},
        "augmentations": [{"crop_size": crop_size, "num_crops": 2}],
    }
    (folder / "args.json").write_text(json.dumps(args))
    return path


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "trained_models" / "simclr" / "run0")


def write_dtd(root: Path, classes=("banded", "dotted", "striped"), per_split=(4, 2, 3)) -> Path:
    """torchvision's DTD layout: ROOT/dtd/dtd/images/<class>/<file>.jpg and labels/<split>1.txt."""
    data = root / "dtd" / "dtd"
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val", "test"), per_split, strict=True):
        lines = []
        for c, cls in enumerate(classes):
            (data / "images" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                name = f"{cls}_{split}_{i:04d}.jpg"
                pixels = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(data / "images" / cls / name)
                lines.append(f"{cls}/{name}")
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return root


VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>24</width><height>24</height>
<depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = "<object><name>{cls}</name><difficult>{difficult}</difficult></object>"


def write_voc2007(root: Path, per_split=6) -> Path:
    """torchvision's VOCDetection layout for 2007: ROOT/VOCdevkit/VOC2007/{JPEGImages,
    Annotations, ImageSets/Main/<split>.txt}. Image k has a cat, a dog when k is even, and a
    difficult-only bird."""
    voc = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        names = []
        for k in range(per_split):
            name = f"{split}{k:03d}"
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                voc / "JPEGImages" / f"{name}.jpg"
            )
            objects = [("cat", 0), ("bird", 1)] + ([("dog", 0)] if k % 2 == 0 else [])
            xml = VOC_XML.format(
                name=name,
                objects="".join(VOC_OBJECT.format(cls=c, difficult=d) for c, d in objects),
            )
            (voc / "Annotations" / f"{name}.xml").write_text(xml)
            names.append(name)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root
