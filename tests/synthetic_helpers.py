"""Builders for tiny synthetic data sets and configs used by tests/test_synthetic_*.py.

Every image is a solid colour, unique over the data set, so a view can be traced back to its file
by content (the augmentations used by the tests change geometry only, never colour).
"""

import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from solo_stablerep.data.manifest import CaptionRecord, image_relpath, write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "scripts" / "pretrain" / "synthetic"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def colour(g: int) -> Tuple[int, int, int]:
    """The g-th unique colour, 16 levels apart on each channel so that it survives augmentation."""
    return (8 + 16 * (g % 16), 8 + 16 * ((g // 16) % 16), 8 + 16 * (g // 256))


def solid_image(path: Path, rgb: Tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


def make_manifest_dataset(
    root: Path,
    num_captions: int,
    images_per_caption: int,
    class_names: Optional[Sequence[str]] = None,
    size: int = 16,
) -> Dict[str, List[Tuple[int, int, int]]]:
    """Writes a manifest data set of solid-colour PNGs; returns caption id -> colours of its images."""
    records, colours = [], {}
    for c in range(num_captions):
        cid = f"cap{c:04d}"
        paths = []
        colours[cid] = []
        for k in range(images_per_caption):
            rel = image_relpath(cid, k, "png")
            rgb = colour(c * images_per_caption + k)
            solid_image(root / rel, rgb, size)
            paths.append(rel)
            colours[cid].append(rgb)
        label = None if class_names is None else c % len(class_names)
        records.append(CaptionRecord(cid, f"caption number {c}", label, paths))
    write_manifest(root, records, class_names=class_names, generator={"test": True})
    return colours


def view_colour(view: torch.Tensor) -> Tuple[int, int, int]:
    """Colour of a (normalised, ImageNet mean/std) solid view, checking that it is solid."""
    rgb = (view * IMAGENET_STD + IMAGENET_MEAN) * 255
    spread = (rgb.amax(dim=(1, 2)) - rgb.amin(dim=(1, 2))).max().item()
    assert spread < 4, f"view is not a solid colour (spread {spread})"
    return tuple(int(round(v)) for v in rgb.mean(dim=(1, 2)).tolist())


def nearest_colour(rgb: Sequence[float], candidates: Sequence[Tuple[int, int, int]]) -> Tuple[int, int, int]:
    dists = [np.abs(np.subtract(rgb, c)).max() for c in candidates]
    best = int(np.argmin(dists))
    assert dists[best] <= 4, f"colour {rgb} matches none of the images"
    return candidates[best]


def copy_configs(dst: Path, crop_size: int = 16) -> Path:
    """Copy of scripts/pretrain/synthetic with tiny crops and colour-preserving augmentations."""
    shutil.copytree(CONFIG_DIR, dst)
    for aug_file in (dst / "augmentations").glob("*.yaml"):
        text = aug_file.read_text()
        colour_changing = ("color_jitter", "grayscale", "gaussian_blur")
        for key in (f"{aug}:\n    prob: {p}" for aug, p in zip(colour_changing, (0.8, 0.2, 0.5))):
            assert key in text, f"{aug_file} changed: update tests/synthetic_helpers.py"
            text = text.replace(key, key.rsplit(" ", 1)[0] + " 0.0")
        text = text.replace("crop_size: 224", f"crop_size: {crop_size}")
        aug_file.write_text(text)
    return dst


def compose_cfg(config_dir: Path, config_name: str, overrides: Sequence[str]):
    """The cfg as the entry point sees it after parsing (solo-learn's parse_cfg + the synthetic part)."""
    from hydra import compose, initialize_config_dir

    from solo_stablerep.pretrain import parse_pretrain_cfg

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return parse_pretrain_cfg(cfg)


CPU_OVERRIDES = [
    "devices=1",
    "accelerator=cpu",
    "strategy=auto",
    "precision=32",
    "sync_batchnorm=False",
    "data.num_workers=0",
    "dali.device=cpu",
    "optimizer.batch_size=4",
]
