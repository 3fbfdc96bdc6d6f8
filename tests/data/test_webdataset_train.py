"""WebDataset shards in training: DDP (2 gloo processes, uneven shards) gives every rank the same
number of batches in every epoch, and the entry point trains an epoch with PyTorch and with DALI."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("solo", reason="the loaders build on solo-learn's augmentations")

from helpers import (  # noqa: E402
    REPO,
    SYNTHETIC_CPU_OVERRIDES,
    colour,
    compose_parsed_cfg,
    copy_configs,
    make_manifest_dataset,
    solid_image,
)
from omegaconf import OmegaConf  # noqa: E402

from data_gen.convert import convert  # noqa: E402

WORLD_SIZE, NUM_CAPTIONS, BATCH_SIZE, EPOCHS = 2, 17, 4, 2


def _worker(rank, cfg_dict, port, results):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        counts = {}
        for data_format in ("image_folder", "dali"):
            cfg = OmegaConf.create(cfg_dict)
            cfg.data.format = data_format
            data = prepare_synthetic_train_data(cfg)
            loader = data if data_format == "image_folder" else data.build_loader(rank, WORLD_SIZE)
            counts[data_format] = [(len(loader), sum(1 for _ in loader)) for _ in range(EPOCHS)]
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, counts)
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def test_ddp_uneven_shards_same_batches_on_every_rank(tmp_path):
    pytest.importorskip("nvidia.dali", reason="the DALI loader needs nvidia-dali")
    make_manifest_dataset(tmp_path / "ds", NUM_CAPTIONS, 3)
    convert(
        tmp_path / "ds", tmp_path / "shards", shard_bytes=16000, progress=False
    )  # 4 samples a tar
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(tars) % WORLD_SIZE == 1, "the test needs more tars on one rank than on the other"
    cfg = compose_parsed_cfg(
        copy_configs(tmp_path / "cfg"),
        "stablerep.yaml",
        [
            f"data.train_path={tmp_path / 'shards'}",
            "data.synthetic.layout=webdataset",
            *SYNTHETIC_CPU_OVERRIDES,
            "data.synthetic.n_img=2",
            "data.num_workers=2",
        ],
    )
    results = mp.get_context("spawn").SimpleQueue()
    port = 29500 + (os.getpid() + 7) % 1000
    mp.spawn(
        _worker, args=(OmegaConf.to_container(cfg), port, results), nprocs=WORLD_SIZE, join=True
    )
    expected = NUM_CAPTIONS // (WORLD_SIZE * BATCH_SIZE)
    for rank_counts in results.get():
        for data_format in ("image_folder", "dali"):
            assert rank_counts[data_format] == [(expected, expected)] * EPOCHS, (
                data_format,
                rank_counts,
            )


TINY_RUN = [
    "max_epochs=1",
    "+limit_train_batches=2",
    "+limit_val_batches=1",
    "+num_sanity_val_steps=0",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "data.synthetic.n_img=2",
    "data.synthetic.layout=webdataset",
    *SYNTHETIC_CPU_OVERRIDES,
]


@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
def test_entry_point_trains_on_shards_with_online_eval(tmp_path, data_format):
    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    make_manifest_dataset(tmp_path / "ds", 8, 3, class_names=["a", "b"])
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=6000, progress=False)
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
        f"data.train_path={tmp_path / 'shards'}",
        f"data.val_path={tmp_path / 'val'}",
        f"data.format={data_format}",
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


TINY_TEXT = [
    "method_kwargs.embed_dim=16",
    "method_kwargs.text_width=32",
    "method_kwargs.text_layers=1",
    "method_kwargs.text_heads=2",
    "method_kwargs.context_length=12",
]


@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
def test_stablerep_pp_batches_carry_the_tokens_of_each_samples_caption(tmp_path, data_format):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.text import CaptionTokenizer, with_caption_tokens

    make_manifest_dataset(tmp_path / "ds", 8, 3)
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=6000, progress=False)
    cfg = compose_parsed_cfg(
        copy_configs(tmp_path / "cfg"),
        "stablerep_pp.yaml",
        [
            f"data.train_path={tmp_path / 'shards'}",
            "data.synthetic.layout=webdataset",
            "data.synthetic.n_img=2",
            *SYNTHETIC_CPU_OVERRIDES,
            *TINY_TEXT,
            f"data.format={data_format}",
        ],
    )
    loader = with_caption_tokens(cfg, prepare_synthetic_train_data(cfg))
    if data_format == "dali":
        loader = loader.build_loader()
    tokenizer = CaptionTokenizer(12)
    for _ in range(
        2
    ):  # DALI runs ahead of the iterator: the second epoch checks nothing is mixed up
        batches = list(loader)
        assert len(batches) == len(loader) == 8 // cfg.optimizer.batch_size
        for indexes, views, _, tokens in batches:
            assert len(views) == cfg.data.num_large_crops + cfg.data.num_small_crops
            expected = tokenizer(
                [f"caption number {i}" for i in indexes.tolist()]
            )  # make_manifest_dataset's texts
            assert torch.equal(tokens, expected)


@pytest.mark.slow
def test_entry_point_trains_stablerep_pp_on_labelled_shards(tmp_path):
    make_manifest_dataset(tmp_path / "ds", 8, 3, class_names=["a", "b"])
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=6000, progress=False)
    for k, name in enumerate("ab"):
        solid_image(tmp_path / "val" / name / "0.png", colour(200 + k))
    command = [
        sys.executable,
        "-m",
        "solo_stablerep.pretrain",
        "--config-path",
        str(copy_configs(tmp_path / "cfg")),
        "--config-name",
        "stablerep_pp.yaml",
        f"data.train_path={tmp_path / 'shards'}",
        f"data.val_path={tmp_path / 'val'}",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        *TINY_RUN,
        *TINY_TEXT,
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "ckpt").rglob("*.ckpt"))
