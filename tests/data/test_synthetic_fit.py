"""Short end-to-end runs of the pretrain entry point on a synthetic data set (CPU, 16 px,
resnet18)."""

import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("solo", reason="the entry point runs solo-learn's training")

from helpers import (  # noqa: E402
    REPO,
    SYNTHETIC_CPU_OVERRIDES,
    colour,
    copy_configs,
    make_manifest_dataset,
    solid_image,
)

TINY_RUN = [
    "max_epochs=1",
    "+limit_train_batches=2",
    "+limit_val_batches=1",
    "+num_sanity_val_steps=0",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "data.synthetic.n_img=2",
    *SYNTHETIC_CPU_OVERRIDES,
]


@pytest.mark.slow
def test_fit_pytorch_loader_unlabelled(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from solo_stablerep.pretrain import run_pretrain

    make_manifest_dataset(tmp_path / "ds", 8, 3)
    config_dir = copy_configs(tmp_path / "cfg")
    overrides = [
        f"data.train_path={tmp_path / 'ds'}",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        *TINY_RUN,
    ]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        cfg = compose(config_name="stablerep.yaml", overrides=overrides)

    monkeypatch.chdir(tmp_path)  # Lightning's CSV logs go to the working directory
    trainer = run_pretrain(cfg)

    assert trainer.global_step == 2
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert (
        trainer.lightning_module.classifier.out_features == 1
    )  # no labels: 1 class, as solo-learn
    assert list((tmp_path / "ckpt").rglob("*.ckpt"))


@pytest.mark.slow
def test_fit_dali_cpu_with_labels_and_online_eval_through_the_cli(tmp_path):
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    make_manifest_dataset(tmp_path / "ds", 8, 3, class_names=["a", "b"])
    for k, name in enumerate("ab"):
        solid_image(tmp_path / "val" / name / "0.png", colour(200 + k))
    config_dir = copy_configs(tmp_path / "cfg")
    command = [
        sys.executable,
        "-m",
        "solo_stablerep.pretrain",
        "--config-path",
        str(config_dir),
        "--config-name",
        "stablerep.yaml",
        f"data.train_path={tmp_path / 'ds'}",
        f"data.val_path={tmp_path / 'val'}",
        "data.format=dali",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        *TINY_RUN,
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "ckpt").rglob("*.ckpt"))
