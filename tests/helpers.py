"""Helpers shared by the tests: paths, cfg overrides and composition, tiny data sets, and the entry
point run as a subprocess. conftest.py holds only pytest fixtures and marks, built on this module.

Manifest data sets are solid-colour images, each colour unique over the data set, so a view can be
traced back to its file by content (the augmentations set by :func:`copy_configs` change geometry
only).
"""

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solo_stablerep._paths import CONFIGS
from solo_stablerep.data.manifest import CaptionRecord, image_relpath, write_manifest

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = CONFIGS  # scripts/pretrain links to it
SYNTHETIC_CONFIGS = REPO / "scripts" / "pretrain" / "synthetic"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SOLO_MISSING_REASON = (
    "solo-learn (commit 9187ea3) is not importable: integration tests did not run; "
    "install it with `bash scripts/install_solo_learn.sh [SOURCE_DIR]`"
)

# ------------------------------------------------------------------------------ cfg overrides

# The machine part: one CPU process, no loader workers, no mixed precision, no DDP.
CPU_OVERRIDES = [
    "accelerator=cpu",
    "devices=1",
    "strategy=auto",
    "precision=32",
    "sync_batchnorm=False",
    "data.num_workers=0",
]
SMALL_BATCH_OVERRIDE = "optimizer.batch_size=4"
# Configs with a dali: section (synthetic/, synthetic-paper/; custom/ has none) run DALI on the CPU
# too.
DALI_CPU_OVERRIDE = "dali.device=cpu"
SYNTHETIC_CPU_OVERRIDES = CPU_OVERRIDES + [DALI_CPU_OVERRIDE, SMALL_BATCH_OVERRIDE]
# Shrinks any scripts/pretrain config to a CPU smoke run: resnet18, tiny projector, batches of 4
# items, one epoch, no wandb, no auto-resume.
SMOKE_OVERRIDES = CPU_OVERRIDES + [
    SMALL_BATCH_OVERRIDE,
    "backbone.name=resnet18",
    "max_epochs=1",
    "auto_resume.enabled=False",
    "wandb.enabled=False",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
]


def crop_overrides(num_pipelines: int, crop_size: int = 32) -> list:
    return [f"augmentations.{i}.crop_size={crop_size}" for i in range(num_pipelines)]


# -------------------------------------------------------------------------------- cfg composition


def compose_raw_cfg(config_dir: Path, config_name: str, overrides: Sequence[str]):
    """The DictConfig Hydra hands to the entry point for these command-line overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_parsed_cfg(config_dir: Path, config_name: str, overrides: Sequence[str]):
    """The cfg as the entry point sees it after parsing (solo-learn's parse_cfg + the synthetic
    part)."""
    from solo_stablerep.pretrain import parse_pretrain_cfg

    return parse_pretrain_cfg(compose_raw_cfg(config_dir, config_name, overrides))


def copy_configs(dst: Path, crop_size: int = 16) -> Path:
    """Copy of scripts/pretrain/synthetic with tiny crops and colour-preserving augmentations."""
    shutil.copytree(SYNTHETIC_CONFIGS, dst)
    for aug_file in (dst / "augmentations").glob("*.yaml"):
        text = aug_file.read_text()
        colour_changing = ("color_jitter", "grayscale", "gaussian_blur")
        for key in (
            f"{aug}:\n    prob: {p}"
            for aug, p in zip(colour_changing, (0.8, 0.2, 0.5), strict=True)
        ):
            assert key in text, f"{aug_file} changed: update tests/helpers.py"
            text = text.replace(key, key.rsplit(" ", 1)[0] + " 0.0")
        text = text.replace("crop_size: 224", f"crop_size: {crop_size}")
        aug_file.write_text(text)
    return dst


# ------------------------------------------------------------------------------------ data sets


def write_image_folder(root: Path, num_classes: int = 2, per_class: int = 8, size: int = 32):
    """An ImageFolder of random-noise PNGs, class0/ ... class{num_classes-1}/."""
    rng = np.random.default_rng(0)
    for c in range(num_classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def procedural_flags(images_per_caption: int = 2) -> list[str]:
    """``stablerep-generate`` options of a tiny CPU run of the weights-free procedural backend."""
    size_and_count = ["--resolution", "32", "--image-size", "16"]
    size_and_count += ["--images-per-caption", str(images_per_caption)]
    return ["--backend", "procedural", *size_and_count, "--no-progress", "--device", "cpu"]


def cut_copies(pristine: Path, log: str, tmp_path: Path) -> Iterator[tuple[int, bool, Path]]:
    """A crash cutting an append-only log inside its last record, at every byte: for each cut, a
    copy of the folder ``pristine`` whose log (``log``, relative to it) is cut there, as
    (cut, whether the log is whole, copy); each copy is removed when the next is made."""
    full = (pristine / log).read_bytes()
    last_start = full.rindex(b"\n", 0, len(full) - 1) + 1
    for cut in range(last_start, len(full) + 1):
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, copy)
        (copy / log).write_bytes(full[:cut])
        yield cut, cut == len(full), copy
        shutil.rmtree(copy)


def colour(g: int) -> tuple[int, int, int]:
    """The g-th unique colour, 16 levels apart on each channel so that it survives augmentation."""
    return (8 + 16 * (g % 16), 8 + 16 * ((g // 16) % 16), 8 + 16 * (g // 256))


def solid_image(path: Path, rgb: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


def make_manifest_dataset(
    root: Path,
    num_captions: int,
    images_per_caption: int,
    class_names: Sequence[str] | None = None,
    size: int = 16,
    caption: Callable[[int], str] = "caption number {}".format,
    caption_id: Callable[[int], str] = "cap{:04d}".format,
) -> dict[str, list[tuple[int, int, int]]]:
    """Writes a manifest data set of solid-colour PNGs; caption c is ``caption(c)`` with id
    ``caption_id(c)`` and label ``c % len(class_names)``. Returns caption id -> colours of its
    images."""
    records, colours = [], {}
    for c in range(num_captions):
        cid = caption_id(c)
        paths = []
        colours[cid] = []
        for k in range(images_per_caption):
            rel = image_relpath(cid, k, "png")
            rgb = colour(c * images_per_caption + k)
            solid_image(root / rel, rgb, size)
            paths.append(rel)
            colours[cid].append(rgb)
        label = None if class_names is None else c % len(class_names)
        records.append(CaptionRecord(cid, caption(c), label, paths))
    write_manifest(root, records, class_names=class_names, generator={"test": True})
    return colours


def view_colour(view: torch.Tensor) -> tuple[int, int, int]:
    """Colour of a (normalised, ImageNet mean/std) solid view, checking that it is solid."""
    rgb = (view * IMAGENET_STD + IMAGENET_MEAN) * 255
    spread = (rgb.amax(dim=(1, 2)) - rgb.amin(dim=(1, 2))).max().item()
    assert spread < 4, f"view is not a solid colour (spread {spread})"
    return tuple(int(round(v)) for v in rgb.mean(dim=(1, 2)).tolist())


def nearest_colour(
    rgb: Sequence[float], candidates: Sequence[tuple[int, int, int]]
) -> tuple[int, int, int]:
    dists = [np.abs(np.subtract(rgb, c)).max() for c in candidates]
    best = int(np.argmin(dists))
    assert dists[best] <= 4, f"colour {rgb} matches none of the images"
    return candidates[best]


# ---------------------------------------------------------------------------- the entry point


def console_script(name: str) -> str:
    """The console script ``name`` installed beside the running Python (its venv's ``bin/``), not
    the first one on PATH: the venv need not be activated, and PATH may hold another
    installation."""

    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"console script {name!r} is not installed beside {sys.executable}: pip install -e ."
    )


def run_pretrain_command(command, config_dir, config_name, cwd, *overrides):
    """Runs the entry point as a user would: ``command --config-path ... key=value ...`` on top of
    SMOKE_OVERRIDES (an override given here replaces the smoke one of the same key). A bare command
    name is a console script, looked up with :func:`console_script`."""

    replaced = {o.split("=")[0] for o in overrides}
    base = [o for o in SMOKE_OVERRIDES if o.split("=")[0] not in replaced]
    command = list(command)
    if len(command) == 1 and "/" not in command[0]:
        command = [console_script(command[0])]
    return subprocess.run(
        command
        + ["--config-path", str(config_dir), "--config-name", config_name]
        + base
        + list(overrides),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def solo_available() -> bool:
    from solo_stablerep import SoloLearnNotAvailable, check_solo_learn

    try:
        check_solo_learn()
    except SoloLearnNotAvailable:
        return False
    return True


requires_solo = pytest.mark.skipif(not solo_available(), reason=SOLO_MISSING_REASON)


# ------------------------------------------------------------------- solo-learn features, tiny runs

TINY_TEXT_TOWER = [
    "method_kwargs.embed_dim=16",
    "method_kwargs.text_width=32",
    "method_kwargs.text_layers=1",
    "method_kwargs.text_heads=2",
    "method_kwargs.context_length=12",
]
# per method of scripts/pretrain/synthetic: images per caption (simclr: 2 crops of one image) and
# what shrinks it further
_TINY_METHOD_OVERRIDES = {
    "stablerep": ["data.synthetic.n_img=2"],
    "stablerep_pp": ["data.synthetic.n_img=2", *TINY_TEXT_TOWER],
    "synclr": ["data.synthetic.n_img=2", "augmentations.1.crop_size=8"],
    "simclr": ["data.synthetic.n_img=1"],
}
FEATURE_METHODS = tuple(_TINY_METHOD_OVERRIDES)


def labelled_synthetic_data(root: Path, num_classes: int = 4, num_captions: int = 8):
    """A labelled manifest data set (2 solid-colour images per caption, 16 px) and a validation
    ImageFolder of noise whose class folders are its class names; returns (data root, val root)."""
    val = write_image_folder(root / "val", num_classes=num_classes, per_class=2, size=16)
    class_names = [f"class{c}" for c in range(num_classes)]
    make_manifest_dataset(root / "data", num_captions, 2, class_names=class_names)
    return root / "data", val


def tiny_synthetic_run_cfg(method: str, data: Path, val: Path, workdir: Path, *overrides):
    """The raw cfg of one epoch of 2 steps of ``method`` (scripts/pretrain/synthetic) on CPU:
    batches of 4 captions, 16 px crops, resnet18, validated on 2 batches of ``val``."""
    return compose_raw_cfg(
        CONFIGS / "synthetic",
        f"{method}.yaml",
        [
            *SMOKE_OVERRIDES,
            DALI_CPU_OVERRIDE,
            *crop_overrides(1, 16),
            *_TINY_METHOD_OVERRIDES[method],
            "+limit_train_batches=2",
            "+limit_val_batches=2",
            f"data.train_path={data}",
            f"data.val_path={val}",
            f"checkpoint.dir={workdir / 'trained_models'}",
            *overrides,
        ],
    )
