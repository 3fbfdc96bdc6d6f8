"""Shared fixtures: tiny image folders and solo-learn configs composed from the shipped configs
(solo_stablerep/configs, linked as scripts/pretrain)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solo_stablerep._paths import CONFIGS

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = CONFIGS  # scripts/pretrain links to it
SOLO_MISSING_REASON = (
    "solo-learn (commit 9187ea3) is not importable: integration tests did not run; "
    "install it with `bash scripts/install_solo_learn.sh [SOURCE_DIR]`"
)

# Overrides that shrink any scripts/pretrain config to a CPU smoke run: resnet18 at 32 px,
# tiny projector, batches of 4 items, no workers, no mixed precision, no DDP, no wandb.
CPU_OVERRIDES = [
    "backbone.name=resnet18",
    "accelerator=cpu",
    "devices=1",
    "strategy=auto",
    "precision=32",
    "sync_batchnorm=False",
    "optimizer.batch_size=4",
    "data.num_workers=0",
    "max_epochs=1",
    "auto_resume.enabled=False",
    "wandb.enabled=False",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
]


def console_script(name: str) -> str:
    """The console script ``name`` installed beside the running Python (its venv's ``bin/``), not the
    first one on PATH: the venv need not be activated, and PATH may hold another installation."""

    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"console script {name!r} is not installed beside {sys.executable}: pip install -e .")


def run_pretrain_command(command, config_dir, config_name, cwd, *overrides):
    """Runs the entry point as a user would: ``command --config-path ... key=value ...`` on top of
    CPU_OVERRIDES (an override given here replaces the CPU one of the same key). A bare command name
    is a console script, looked up with :func:`console_script`."""

    replaced = {o.split("=")[0] for o in overrides}
    base = [o for o in CPU_OVERRIDES if o.split("=")[0] not in replaced]
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


def crop_overrides(num_pipelines: int, crop_size: int = 32) -> list:
    return [f"augmentations.{i}.crop_size={crop_size}" for i in range(num_pipelines)]


def compose_cfg(config_dir: Path, config_name: str, overrides: list):
    """The DictConfig Hydra hands to the entry point for these command-line overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        return compose(config_name=config_name, overrides=overrides)


def write_image_folder(root: Path, num_classes: int = 2, per_class: int = 8, size: int = 32):
    rng = np.random.default_rng(0)
    for c in range(num_classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("image_folder"))
