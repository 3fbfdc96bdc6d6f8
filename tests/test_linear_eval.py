"""Offline linear evaluation of a StableRep checkpoint with solo-learn's own `main_linear.py`, run
exactly as docs/pretraining.md shows (Hydra-escaped `=` in the checkpoint name, `devices='1'` on
CPU).

`main_linear.py` is a script at the root of solo-learn's source, not part of the installed package:
it is taken from SOLO_LEARN_SRC (a source folder), else from the vendored source archive that set-up
installs from (SOLO_LEARN_ARCHIVE, default ../shared/vendor/solo-learn-9187ea3.tar.gz next to the
repository).
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import (
    PRETRAIN_CONFIGS,
    REPO,
    crop_overrides,
    requires_solo,
    run_pretrain_command,
    write_image_folder,
)

pytestmark = [pytest.mark.slow, requires_solo]

ARCHIVE = Path(
    os.environ.get(
        "SOLO_LEARN_ARCHIVE", REPO.parent / "shared" / "vendor" / "solo-learn-9187ea3.tar.gz"
    )
)


def solo_learn_scripts(dst: Path) -> Path:
    """A folder with solo-learn's main_linear.py and scripts/linear/ (configs)."""
    source = os.environ.get("SOLO_LEARN_SRC")
    if source and (Path(source) / "main_linear.py").is_file():
        return Path(source)
    if not ARCHIVE.is_file():
        pytest.skip(
            "solo-learn's main_linear.py not found: set SOLO_LEARN_SRC, or SOLO_LEARN_ARCHIVE "
            f"(no {ARCHIVE})"
        )
    with tarfile.open(ARCHIVE) as archive:
        top = archive.getnames()[0].split("/")[0]
        wanted = [
            m
            for m in archive.getmembers()
            if m.name == f"{top}/main_linear.py" or m.name.startswith(f"{top}/scripts/linear/")
        ]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
        archive.extractall(dst, members=wanted, **safe)
    return dst / top


def main_linear(tmp_path: Path, checkpoint: Path, images: Path, method: str) -> Path:
    """Runs solo-learn's main_linear.py on a pretrained checkpoint (resnet18, one epoch, CPU) as
    docs/pretraining.md shows; returns the linear checkpoint."""
    solo = solo_learn_scripts(tmp_path / "solo-learn")
    escaped = str(checkpoint.relative_to(tmp_path)).replace("=", r"\=")
    command = [
        sys.executable,
        str(solo / "main_linear.py"),
        "--config-path",
        str(solo / "scripts/linear/imagenet-100"),
        "--config-name",
        "simclr.yaml",
        f"name={method}-linear",
        f"pretrain_method={method}",
        "backbone.name=resnet18",
        f"pretrained_feature_extractor={escaped}",
        "data.dataset=custom",
        f"data.train_path={images}",
        f"data.val_path={images}",
        "data.format=image_folder",
        "accelerator=cpu",
        "devices='1'",
        "strategy=auto",
        "precision=32",
        "sync_batchnorm=False",
        "wandb.enabled=False",
        "auto_resume.enabled=False",
        "max_epochs=1",
        "optimizer.batch_size=8",
        "data.num_workers=0",
        "checkpoint.dir=linear_models",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    (linear,) = (tmp_path / "linear_models" / "linear").rglob("*.ckpt")
    return linear


def test_main_linear_evaluates_a_stablerep_checkpoint_as_the_readme_says(tmp_path):
    images = write_image_folder(
        tmp_path / "images", num_classes=6, per_class=4
    )  # top-5 accuracy needs >= 5
    pretrained = run_pretrain_command(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        PRETRAIN_CONFIGS / "custom",
        "stablerep.yaml",
        tmp_path,
        *crop_overrides(1),
        f"data.train_path={images}",
        "checkpoint.dir=trained_models",
        "+limit_train_batches=2",
    )
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    (checkpoint,) = (tmp_path / "trained_models" / "stablerep").rglob("*.ckpt")
    assert (
        "=" in checkpoint.name
    )  # solo-learn's names (…-ep=0.ckpt): why docs/pretraining.md escapes it for Hydra

    linear = main_linear(tmp_path, checkpoint, images, "stablerep")
    pretrained_state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    linear_state = torch.load(linear, map_location="cpu", weights_only=False)["state_dict"]
    assert linear_state["classifier.weight"].shape[0] == 6
    # the frozen backbone is StableRep's: main_linear.py loads it with strict=False, so check it did
    convs = [k for k in pretrained_state if k.startswith("backbone.") and "conv" in k]
    assert convs and all(torch.equal(pretrained_state[k], linear_state[k]) for k in convs)


def test_a_synclr_checkpoint_resumes_and_evaluates_with_main_linear(tmp_path):
    images = write_image_folder(tmp_path / "images", num_classes=6, per_class=4)
    run = [
        PRETRAIN_CONFIGS / "custom",
        "synclr.yaml",
        tmp_path,
        "augmentations.0.crop_size=32",
        "augmentations.1.crop_size=16",
        "method_kwargs.ibot_weight=0",
        "method_kwargs.queue_size=16",
        f"data.train_path={images}",
        "checkpoint.dir=trained_models",
        "+limit_train_batches=2",
    ]
    pretrained = run_pretrain_command([sys.executable, "-m", "solo_stablerep.pretrain"], *run)
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    (first,) = (tmp_path / "trained_models" / "synclr").rglob("*.ckpt")
    first_state = torch.load(first, map_location="cpu", weights_only=False)
    assert first_state["global_step"] == 2 and bool(first_state["state_dict"]["queue.valid"].all())

    # a second epoch from the checkpoint: teacher, queue and step count come back
    escaped = str(first.relative_to(tmp_path)).replace("=", r"\=")
    resumed = run_pretrain_command(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        *run,
        "max_epochs=2",
        f"+resume_from_checkpoint={escaped}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (second,) = [c for c in (tmp_path / "trained_models" / "synclr").rglob("*.ckpt") if c != first]
    second_state = torch.load(second, map_location="cpu", weights_only=False)
    assert second_state["global_step"] == 4
    # the EMA moved the teacher on from the first run's, not from a fresh copy of the student
    name = "momentum_projector.0.weight"
    drift = (second_state["state_dict"][name] - first_state["state_dict"][name]).abs().max()
    fresh = (
        (second_state["state_dict"][name] - second_state["state_dict"]["projector.0.weight"])
        .abs()
        .max()
    )
    assert 0 < drift < fresh

    linear = main_linear(tmp_path, second, images, "synclr")
    linear_state = torch.load(linear, map_location="cpu", weights_only=False)["state_dict"]
    convs = [k for k in second_state["state_dict"] if k.startswith("backbone.") and "conv" in k]
    assert convs and all(torch.equal(second_state["state_dict"][k], linear_state[k]) for k in convs)
