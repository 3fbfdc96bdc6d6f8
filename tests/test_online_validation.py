"""Online validation on synthetic data, as a user runs it: a labelled captions file -> `python -m
data_gen --backend procedural` (files and manifest, or `--format webdataset` tar shards) -> one
short epoch validated on real images (sklearn's digits saved as an ImageFolder whose class folders
are the data set's class_names) -> the validation accuracy is logged."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, SMOKE_OVERRIDES, compose_raw_cfg, crop_overrides, requires_solo
from PIL import Image

from solo_stablerep._paths import pretrain_config_dir
from solo_stablerep.errors import INPUT_ERROR_EXIT

pytestmark = requires_solo

DIGITS = 10
TINY_TEXT = [
    "method_kwargs.embed_dim=16",
    "method_kwargs.text_width=32",
    "method_kwargs.text_layers=1",
    "method_kwargs.text_heads=2",
    "method_kwargs.context_length=12",
]


@pytest.fixture(scope="module", params=["manifest", "webdataset"])
def generated(tmp_path_factory, request):
    """A labelled data set written by the generator in each layout: 2 captions per digit, 2 images
    each; labels are digits. Returns its folder and the overrides that read it."""
    layout = request.param
    root = tmp_path_factory.mktemp(f"generated_{layout}")
    captions = root / "captions.csv"
    rows = [
        f"a white digit {d} on a dark background{' small' if i else ''},{d}"
        for d in range(DIGITS)
        for i in (0, 1)
    ]
    captions.write_text("caption,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "data_gen",
        str(captions),
        str(root / "data"),
        "--backend",
        "procedural",
        "--images-per-caption",
        "2",
        "--image-size",
        "32",
        "--no-progress",
        "--format",
        layout,
        "--shard-size",
        "0.00003",
    ]  # a few tars of ~30 kB
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if layout == "manifest":
        # what tripped solo-learn's ImageFolder *train* reader: the generator's own folders
        assert {p.name for p in (root / "data").iterdir()} >= {"images", "parts", "manifest.jsonl"}
    else:
        assert len(list((root / "data").glob("*.tar"))) > 1
    return root / "data", [f"data.synthetic.layout={layout}"]


@pytest.fixture(scope="module")
def real_digits(tmp_path_factory):
    """sklearn's 8x8 digit scans as an ImageFolder, 3 per class, class folders "0".."9"."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("real_digits")
    for d in range(DIGITS):
        (root / str(d)).mkdir()
        for i, image in enumerate(digits.images[digits.target == d][:3]):
            pixels = np.round(image * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.BILINEAR).save(
                root / str(d) / f"{i}.png"
            )
    return root


def short_epoch(config_name, generated, val_root, tmp_path, monkeypatch, *overrides):
    from solo_stablerep.pretrain import run_pretrain

    data_root, layout_overrides = generated
    cfg = compose_raw_cfg(
        pretrain_config_dir("synthetic"),
        config_name,
        [
            *layout_overrides,
            *SMOKE_OVERRIDES,
            *crop_overrides(1),
            "data.synthetic.n_img=2",
            "+limit_train_batches=2",
            "+limit_val_batches=2",
            "optimizer.batch_size=8",
            f"data.train_path={data_root}",
            f"data.val_path={val_root}",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
            *overrides,
        ],
    )
    monkeypatch.chdir(tmp_path)  # Lightning writes its logs to the working directory
    trainer = run_pretrain(cfg)
    assert trainer.global_step == 2
    return {name: value.item() for name, value in trainer.callback_metrics.items()}


def assert_accuracy(metrics, name):
    assert name in metrics, sorted(metrics)
    assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 100.0


@pytest.mark.slow
def test_stablerep_logs_val_acc1(generated, real_digits, tmp_path, monkeypatch):
    metrics = short_epoch("stablerep.yaml", generated, real_digits, tmp_path, monkeypatch)
    assert_accuracy(metrics, "val_acc1")


@pytest.mark.slow
def test_stablerep_pp_logs_zero_shot_accuracy(generated, real_digits, tmp_path, monkeypatch):
    metrics = short_epoch(
        "stablerep_pp.yaml", generated, real_digits, tmp_path, monkeypatch, *TINY_TEXT
    )
    assert_accuracy(metrics, "val_acc1")
    assert_accuracy(metrics, "val_zero_shot_acc1")


@pytest.mark.slow
def test_dali_on_cpu_logs_val_acc1(generated, real_digits, tmp_path, monkeypatch):
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    metrics = short_epoch(
        "stablerep.yaml",
        generated,
        real_digits,
        tmp_path,
        monkeypatch,
        "data.format=dali",
        "dali.device=cpu",
    )
    assert_accuracy(metrics, "val_acc1")


def test_missing_train_path_is_one_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "solo_stablerep.pretrain",
            "--config-path",
            str(pretrain_config_dir("synthetic")),
            "--config-name",
            "stablerep.yaml",
            *SMOKE_OVERRIDES,
            f"data.train_path={tmp_path / 'nowhere'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        ),
    )
    assert done.returncode == INPUT_ERROR_EXIT and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last == "solo-stablerep-pretrain: error: "
        f"data.train_path={tmp_path / 'nowhere'}: no such file or folder"
    )


@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["image_folder", "dali"], ids=["pytorch", "dali-cpu"])
def test_synclr_epoch_with_global_and_local_crops(
    generated, real_digits, tmp_path, monkeypatch, data_format
):
    # 20 captions in batches of 8: the 2 batches are the whole epoch; each caption gives 2 images x
    # (1 global crop + 4 local crops), so both loaders must deliver crops of two sizes
    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    metrics = short_epoch(
        "synclr.yaml",
        generated,
        real_digits,
        tmp_path,
        monkeypatch,
        "augmentations.1.crop_size=16",
        f"data.format={data_format}",
        "dali.device=cpu",
    )
    assert_accuracy(metrics, "val_acc1")
    assert math.isfinite(metrics["train_synclr_loss"]) and metrics["train_synclr_loss"] > 0
    assert 0.994 <= metrics["tau"] < 1.0  # the EMA coefficient on its cosine schedule
