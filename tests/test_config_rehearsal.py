"""The first hour on a cluster, rehearsed on CPU: every shipped pretraining config (each method
file of scripts/pretrain/*/, found on disk, so a new one is covered) composes and trains 2
optimiser steps through the entry point with only the machine overridden; the synthetic-paper ones
(the multi-node DDP recipes) also under DDP with 2 gloo processes, launched as a user launches
them.

The overrides are a fixed allow-list of machine keys (:data:`MACHINE_KEYS`), and every other key of
the composed config must stay exactly as shipped: a config that gains a key (or a value) only a GPU
accepts fails here, where no override may hide it, instead of in a cluster's queue. What the
rehearsal cannot cover (docs/pretraining.md, "Rehearsing a config on CPU") is bench/gpu_smoke.py's.
"""

import csv
import gc
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    PRETRAIN_CONFIGS,
    REPO,
    compose_raw_cfg,
    console_script,
    procedural_flags,
    requires_solo,
)
from omegaconf import OmegaConf

pytestmark = requires_solo

# Every method file of every config folder, as `--config-path <folder> --config-name <file>`
# (files named _*.yaml are shared parts, not configs).
SHIPPED = sorted(
    (folder.name, config.name)
    for folder in PRETRAIN_CONFIGS.iterdir()
    if folder.is_dir()
    for config in folder.glob("*.yaml")
    if not config.name.startswith("_")
)
DDP_FOLDER = "synthetic-paper"  # its configs run on several nodes (DDP, sync BN)
DDP_PROCESSES = 2

# The machine, and only the machine: the keys the rehearsal may set ("*" is a list index). Every
# other key of the composed config is compared with the shipped one; `strategy` is not among them:
# the shipped "ddp" runs on CPU too (gloo), with 1 process or 2.
MACHINE_KEYS = (
    "accelerator",
    "devices",
    "num_nodes",
    "precision",
    "sync_batchnorm",  # PyTorch's SyncBatchNorm runs on GPUs only (DDP refuses it on CPU)
    "dali.device",
    "data.num_workers",
    "data.train_path",
    "optimizer.batch_size",
    "backbone.name",
    "backbone.kwargs.img_size",  # a ViT's input size follows the crops
    "augmentations.*.crop_size",
    "max_steps",
)
# the backbone shrunk within its family; solo-learn's ViTs are all patch 16
TINY_BACKBONE = {
    "vit_large": "vit_tiny",
    "vit_base": "vit_tiny",
    "vit_small": "vit_tiny",
    "vit_tiny": "vit_tiny",
    "resnet50": "resnet18",
    "resnet18": "resnet18",
}
TINY_CROP = {224: 32, 96: 16}  # global and local crops, still multiples of the patch
# Lightning has no fp16 autocast on the CPU: bf16 stands in for it (fp16's GradScaler is the GPU
# smoke test's)
CPU_PRECISION = {"16-mixed": "bf16-mixed", "bf16-mixed": "bf16-mixed", "32": "32"}
# What a CPU cannot rehearse (docs/pretraining.md), run by bench/gpu_smoke.py's paper_ddp check
NOT_REHEARSED = {"NCCL", "sync BN", "DALI mixed", "fp16 GradScaler", "fp16 autocast"}
BATCH_SIZE = 2  # items per process; the projectors' BatchNorm needs 2
STEPS = 2
NUM_CAPTIONS = 8  # 4 steps of one process, 2 steps of each of 2 processes


def machine_key(key: str) -> bool:
    """Whether ``key`` is one of MACHINE_KEYS or below one (``devices.0``)."""
    return any(
        re.fullmatch(re.escape(k).replace(r"\*", r"\d+") + r"(\..+)?", key) for k in MACHINE_KEYS
    )


def shipped_cfg(folder: str, name: str):
    return compose_raw_cfg(PRETRAIN_CONFIGS / folder, name, [])


def stand_in(table: dict, shipped_value, key: str):
    assert shipped_value in table, f"the rehearsal has no CPU stand-in for {key}={shipped_value}"
    return table[shipped_value]


def rehearsal_overrides(shipped, data: dict[str, Path], processes: int = 1) -> list[str]:
    """Hydra overrides that put the shipped config on ``processes`` CPU processes."""
    values = {
        "accelerator": "cpu",
        "devices": processes,
        "precision": stand_in(CPU_PRECISION, str(shipped.precision), "precision"),
        "sync_batchnorm": False,
        "data.num_workers": 0,
        "data.train_path": stand_in(data, shipped.data.dataset, "data.dataset"),
        "optimizer.batch_size": BATCH_SIZE,
        "backbone.name": stand_in(TINY_BACKBONE, shipped.backbone.name, "backbone.name"),
        "max_steps": STEPS,
    }
    if "num_nodes" in shipped:
        values["num_nodes"] = 1
    if "dali" in shipped:
        values["dali.device"] = "cpu"
    crops = [aug.crop_size for aug in shipped.augmentations]
    for i, crop in enumerate(crops):
        values[f"augmentations.{i}.crop_size"] = stand_in(TINY_CROP, crop, "crop_size")
    if shipped.backbone.name.startswith("vit"):
        values["backbone.kwargs.img_size"] = TINY_CROP[crops[0]]
    present = flat(shipped)  # "+" adds a key the config lacks

    def shipped_has(key):
        return any(k == key or k.startswith(f"{key}.") for k in present)

    return [f"{'' if shipped_has(key) else '+'}{key}={value}" for key, value in values.items()]


def flat(cfg) -> dict[str, object]:
    """dotted key -> value of every leaf, as written (interpolations unresolved)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict | list):
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False), "")
    return out


# ---------------------------------------------------------------------------------- the data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """data.dataset -> a tiny labelled set from our generator (procedural backend, 16 px) holding
    as many images per caption as any config draws; ``custom``: the same images as an
    ImageFolder."""
    from solo_stablerep.data.manifest import read_manifest

    root = tmp_path_factory.mktemp("rehearsal_data")
    with (root / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "label"])
        writer.writerows(
            (f"a white digit {i % 2}, picture {i}", i % 2) for i in range(NUM_CAPTIONS)
        )
    n_img = max(
        OmegaConf.select(shipped_cfg(*config), "data.synthetic.n_img", default=1)
        for config in SHIPPED
    )
    subprocess.run(
        [
            console_script("stablerep-generate"),
            str(root / "captions.csv"),
            str(root / "synthetic"),
            *procedural_flags(images_per_caption=n_img),
        ],
        check=True,
        capture_output=True,
    )
    header, captions = read_manifest(root / "synthetic")
    for caption in captions:
        for k, image in enumerate(caption.images):
            link = (
                root
                / "custom"
                / header["class_names"][caption.label]
                / f"{caption.caption_id}-{k}.jpg"
            )
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(root / "synthetic" / image)
    return {"synthetic": root / "synthetic", "custom": root / "custom"}


# ---------------------------------------------------------------------------------- the tests


def test_every_config_folder_is_enumerated():
    folders = {folder for folder, _ in SHIPPED}
    assert folders == {"custom", "synthetic", "synthetic-paper"}
    assert {("synthetic-paper", "stablerep.yaml"), ("synthetic", "clip.yaml")} <= set(SHIPPED)


@pytest.mark.parametrize("folder, name", SHIPPED)
def test_the_rehearsal_overrides_only_the_machine(folder, name, tmp_path):
    shipped = shipped_cfg(folder, name)
    paths = {"synthetic": tmp_path, "custom": tmp_path}
    for processes in (1, DDP_PROCESSES):
        rehearsed = compose_raw_cfg(
            PRETRAIN_CONFIGS / folder, name, rehearsal_overrides(shipped, paths, processes)
        )
        before, after = flat(shipped), flat(rehearsed)
        changed = {
            k
            for k in before.keys() | after.keys()
            if before.get(k, KeyError) != after.get(k, KeyError)
        }
        assert {"accelerator", "devices", "backbone.name"} & changed
        not_machine = sorted(k for k in changed if not machine_key(k))
        assert not not_machine, f"{folder}/{name}: the rehearsal would change {not_machine}"


def check_trained(trainer, shipped, tmp_path: Path):
    assert trainer.global_step == STEPS
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert trainer.precision == CPU_PRECISION[str(shipped.precision)]
    params = trainer.lightning_module.parameters()
    assert all(torch.isfinite(p).all() for p in params), "non-finite weights after 2 steps"
    if shipped.checkpoint.enabled:
        assert list((tmp_path / shipped.checkpoint.dir).rglob("*.ckpt"))


@pytest.fixture
def process_group_cleared():
    """Lightning's DDP strategy (the shipped "ddp", here with 1 process) leaves its process group
    and its MASTER_ADDR/MASTER_PORT behind in this process: cleared for the tests that follow."""
    environ = dict(os.environ)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()  # the trainer and its model (up to ~2 GB for SynCLR's paper heads)
    os.environ.clear()
    os.environ.update(environ)


@pytest.mark.slow
@pytest.mark.parametrize("folder, name", SHIPPED)
def test_the_config_trains_two_steps_on_cpu(
    folder, name, data, tmp_path, monkeypatch, process_group_cleared
):
    from solo_stablerep.pretrain import run_pretrain

    monkeypatch.chdir(tmp_path)  # checkpoints, auto-resume and Lightning's logs, as shipped
    shipped = shipped_cfg(folder, name)
    overrides = rehearsal_overrides(shipped, data)
    # oneDNN's bf16 convolution weight gradient on a CPU returns NaN from finite inputs in about 1
    # of 7 runs of synthetic/synclr.yaml (anomaly mode names ConvolutionBackward0; 0 of 14 with
    # PyTorch's own kernels): a PyTorch floor, not the config's, so the rehearsal uses those.
    with torch.backends.mkldnn.flags(enabled=False):
        trainer = run_pretrain(compose_raw_cfg(PRETRAIN_CONFIGS / folder, name, overrides))
    check_trained(trainer, shipped, tmp_path)
    assert trainer.world_size == 1
    shutil.rmtree(tmp_path / shipped.checkpoint.dir, ignore_errors=True)  # ~100-300 MB each


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for folder, name in SHIPPED if folder == DDP_FOLDER])
def test_the_paper_config_trains_two_steps_under_ddp_with_two_gloo_processes(name, data, tmp_path):
    # through the console script: Lightning starts the second process by running the command again
    shipped = shipped_cfg(DDP_FOLDER, name)
    command = [
        console_script("solo-stablerep-pretrain"),
        "--config-path",
        str(PRETRAIN_CONFIGS / DDP_FOLDER),
        "--config-name",
        name,
        *rehearsal_overrides(shipped, data, DDP_PROCESSES),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",  # 2 processes on 2 cores
    )
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [checkpoint] = (tmp_path / shipped.checkpoint.dir).rglob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == STEPS
    # both processes shared the captions: an epoch was 8 / (2 processes x 2) = 2 steps (4 with one)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    shutil.rmtree(tmp_path / shipped.checkpoint.dir)


def test_the_gpu_smoke_test_runs_what_the_rehearsal_cannot():
    listed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    covers = dict(line.split(": ", 1) for line in listed.splitlines())
    assert set(covers["paper_ddp"].split(", ")) == NOT_REHEARSED
    docs = (REPO / "docs" / "pretraining.md").read_text(encoding="utf-8")
    section = docs.split("## Rehearsing a config on CPU")[1].split("\n## ")[0]
    assert {item for item in NOT_REHEARSED if f"**{item}**" in section} == NOT_REHEARSED
