"""DDP (gloo, 2 processes): every caption of an epoch is seen once, on one rank, with all its views.

Checks the PyTorch loader and the DALI loader, which both deal captions out to the ranks themselves
(Lightning injects no sampler into an iterable data set).
"""

import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("solo", reason="the synthetic dataset builds on solo-learn's augmentations")

from helpers import (  # noqa: E402
    SYNTHETIC_CPU_OVERRIDES,
    compose_parsed_cfg,
    copy_configs,
    make_manifest_dataset,
    nearest_colour,
    view_colour,
)
from omegaconf import OmegaConf  # noqa: E402

WORLD_SIZE = 2
NUM_CAPTIONS = 16
BATCH_SIZE = 4
EPOCHS = 2


def _torch_loader(cfg, rank):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    loader = prepare_synthetic_train_data(cfg)  # takes rank and world size from torch.distributed
    return loader, lambda epoch: None  # the loader counts epochs itself


def _dali_loader(cfg, rank):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    cfg.data.format = "dali"
    loader = prepare_synthetic_train_data(cfg).build_loader(rank=rank, world_size=WORLD_SIZE)
    return loader, lambda epoch: None  # the DALI source counts epochs itself


def _seen_captions(loader, set_epoch, colours):
    """Per epoch, per step: this rank's captions, checking each row's views all came from it."""
    seen = []
    for epoch in range(EPOCHS):
        set_epoch(epoch)
        steps = []
        for indexes, views, _ in loader:
            for row, i in enumerate(indexes.tolist()):
                own = colours[f"cap{i:04d}"]
                images = [nearest_colour(view_colour(v[row]), own) for v in views]
                assert len(set(images)) == len(views)
            steps.append(indexes.tolist())
        seen.append(steps)
    return seen


def _worker(rank, cfg_dict, colours, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        seen = {}
        for backend, make_loader in (("torch", _torch_loader), ("dali", _dali_loader)):
            seen[backend] = _seen_captions(*make_loader(OmegaConf.create(cfg_dict), rank), colours)
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def test_ddp_keeps_captions_whole_and_loses_none(tmp_path):
    root = tmp_path / "ds"
    colours = make_manifest_dataset(root, NUM_CAPTIONS, 4)
    config_dir = copy_configs(tmp_path / "cfg")
    cfg = compose_parsed_cfg(
        config_dir,
        "stablerep.yaml",
        [f"data.train_path={root}", *SYNTHETIC_CPU_OVERRIDES, "data.synthetic.n_img=3"],
    )
    assert cfg.optimizer.batch_size == BATCH_SIZE

    results = mp.get_context("spawn").SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.spawn(
        _worker,
        args=(OmegaConf.to_container(cfg), colours, port, results),
        nprocs=WORLD_SIZE,
        join=True,
    )
    gathered = results.get()

    steps_per_epoch = NUM_CAPTIONS // WORLD_SIZE // BATCH_SIZE
    for backend in ("torch", "dali"):
        per_rank = [rank_seen[backend] for rank_seen in gathered]
        orders = []
        for epoch in range(EPOCHS):
            assert all(len(seen[epoch]) == steps_per_epoch for seen in per_rank), backend
            for step in range(steps_per_epoch):
                a, b = (seen[epoch][step] for seen in per_rank)
                assert not set(a) & set(b), f"{backend}: a caption is on both ranks in step {step}"
            captions = [i for seen in per_rank for step in seen[epoch] for i in step]
            assert sorted(captions) == list(range(NUM_CAPTIONS)), (
                f"{backend}: epoch {epoch} lost captions"
            )
            orders.append(captions)
        assert orders[0] != orders[1], f"{backend}: the epochs were not reshuffled"
