"""Offline linear evaluation of a StableRep checkpoint with solo-learn's own `main_linear.py`, run exactly as
docs/pretraining.md shows (Hydra-escaped `=` in the checkpoint name, `devices='1'` on CPU).

`main_linear.py` is a script at the root of solo-learn's source, not part of the installed package: it is taken
from SOLO_LEARN_SRC (a source folder), else from the vendored source archive that set-up installs from
(SOLO_LEARN_ARCHIVE, default ../shared/vendor/solo-learn-9187ea3.tar.gz next to the repository).
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from helpers import PRETRAIN_CONFIGS, REPO, crop_overrides, requires_solo, run_pretrain_command, write_image_folder

pytestmark = [pytest.mark.slow, requires_solo]

ARCHIVE = Path(os.environ.get("SOLO_LEARN_ARCHIVE", REPO.parent / "shared" / "vendor" / "solo-learn-9187ea3.tar.gz"))


def solo_learn_scripts(dst: Path) -> Path:
    """A folder with solo-learn's main_linear.py and scripts/linear/ (configs)."""
    source = os.environ.get("SOLO_LEARN_SRC")
    if source and (Path(source) / "main_linear.py").is_file():
        return Path(source)
    if not ARCHIVE.is_file():
        pytest.skip(f"solo-learn's main_linear.py not found: set SOLO_LEARN_SRC, or SOLO_LEARN_ARCHIVE (no {ARCHIVE})")
    with tarfile.open(ARCHIVE) as archive:
        top = archive.getnames()[0].split("/")[0]
        wanted = [m for m in archive.getmembers()
                  if m.name == f"{top}/main_linear.py" or m.name.startswith(f"{top}/scripts/linear/")]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
        archive.extractall(dst, members=wanted, **safe)
    return dst / top


def test_main_linear_evaluates_a_stablerep_checkpoint_as_the_readme_says(tmp_path):
    images = write_image_folder(tmp_path / "images", num_classes=6, per_class=4)  # top-5 accuracy needs >= 5
    pretrained = run_pretrain_command(
        [sys.executable, "-m", "solo_stablerep.pretrain"], PRETRAIN_CONFIGS / "custom", "stablerep.yaml", tmp_path,
        *crop_overrides(1), f"data.train_path={images}", "checkpoint.dir=trained_models", "+limit_train_batches=2",
    )
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    (checkpoint,) = (tmp_path / "trained_models" / "stablerep").rglob("*.ckpt")
    assert "=" in checkpoint.name  # solo-learn's names (…-ep=0.ckpt): why docs/pretraining.md escapes it for Hydra

    solo = solo_learn_scripts(tmp_path / "solo-learn")
    escaped = str(checkpoint.relative_to(tmp_path)).replace("=", r"\=")
    command = [
        sys.executable, str(solo / "main_linear.py"), "--config-path", str(solo / "scripts/linear/imagenet-100"),
        "--config-name", "simclr.yaml", "name=stablerep-linear", "pretrain_method=stablerep",
        "backbone.name=resnet18", f"pretrained_feature_extractor={escaped}", "data.dataset=custom",
        f"data.train_path={images}", f"data.val_path={images}", "data.format=image_folder",
        "accelerator=cpu", "devices='1'", "strategy=auto", "precision=32", "sync_batchnorm=False",
        "wandb.enabled=False", "auto_resume.enabled=False", "max_epochs=1", "optimizer.batch_size=8",
        "data.num_workers=0", "checkpoint.dir=linear_models",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    (linear,) = (tmp_path / "linear_models" / "linear").rglob("*.ckpt")
    pretrained_state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    linear_state = torch.load(linear, map_location="cpu", weights_only=False)["state_dict"]
    assert linear_state["classifier.weight"].shape[0] == 6
    # the frozen backbone is StableRep's: main_linear.py loads it with strict=False, so check it did
    convs = [k for k in pretrained_state if k.startswith("backbone.") and "conv" in k]
    assert convs and all(torch.equal(pretrained_state[k], linear_state[k]) for k in convs)
