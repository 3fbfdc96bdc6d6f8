"""The demo's images: rendered from the captions by data_gen's procedural backend, and a second,
per-image view of them for the methods that know no captions."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from data_gen import GenerationSettings, RunOptions, generate
from solo_stablerep.data.manifest import CaptionRecord, read_manifest, write_manifest


def generate_images(
    captions: Path, root: Path, images_per_caption: int, image_size: int, seed: int
) -> dict:
    """Renders ``images_per_caption`` images of each caption into the data set ``root``; returns
    data_gen's run summary."""

    settings = GenerationSettings(
        backend="procedural",
        images_per_caption=images_per_caption,
        resolution=max(64, 8 * math.ceil(2 * image_size / 8)),  # render finer, store at crop size
        image_size=image_size,
        image_format="png",
        seed=seed,
    )
    options = RunOptions(batch_size=16, overwrite=True, progress=False, contact_sheet_captions=10)
    return generate(captions, root, settings, options)


def per_image_root(data_root: Path) -> Path:
    """Where :func:`write_per_image_manifest` puts the image-level view of ``data_root``."""

    return data_root.with_name(data_root.name + "_per_image")


def write_per_image_manifest(data_root: Path) -> Path:
    """A second data set over the same files in which every image is an item (its caption repeated):
    the input of SimCLR, BYOL and SupCon, which know no captions. ``images`` is a link to the
    original folder, so nothing is copied."""

    header, records = read_manifest(data_root)
    root = per_image_root(data_root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "images").symlink_to((data_root / "images").resolve(), target_is_directory=True)
    items = [
        CaptionRecord(f"{record.caption_id}_{k:02d}", record.caption, record.label, [image])
        for record in records
        for k, image in enumerate(record.images)
    ]
    write_manifest(root, items, class_names=header["class_names"], generator=header["generator"])
    return root
