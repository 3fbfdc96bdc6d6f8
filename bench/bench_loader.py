"""Throughput of the multi-view synthetic loader vs solo-learn's ImageFolder pretrain loader.

Both read the same JPEG files through the same augmentations (``scripts/pretrain/synthetic``'s
``one_crop.yaml``: one crop per decoded image) with the same worker count; rounds of the two are
interleaved in one run so that machine load affects both alike. Reported: decoded images per second
(after warm-up batches in each round: one, or for DALI both pipelines' prefetch queues' worth), per
second of wall-clock and per second of CPU time of this process (robust to other load on the
machine; measured with in-process loading, 0 workers, for the PyTorch loaders, and with DALI's
threads, which run in this process), and the median over rounds of the ratio multi-view /
ImageFolder (goal: >= 0.95). The same comparison is made for DALI (CPU pipelines unless
--dali-device gpu): our external-source pipeline vs solo-learn's file-reader pipeline.

    python bench/bench_loader.py [--captions 128 --images 10 --n-img 6 --workers 2 --rounds 6]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_data(root: Path, captions: int, images: int, size: int) -> Path:
    """A manifest data set of JPEGs, plus ``root/imagefolder/all/`` linking to the same files."""
    from solo_stablerep.data.manifest import CaptionRecord, image_relpath, write_manifest

    rng = np.random.default_rng(0)
    folder = root / "imagefolder" / "all"
    folder.mkdir(parents=True)
    records = []
    for c in range(captions):
        cid = f"{c:06d}"
        paths = []
        for k in range(images):
            rel = image_relpath(cid, k, "jpg")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            # smooth colours plus noise: JPEG sizes like a real photo's
            low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            low = low.resize((size, size), Image.BICUBIC)
            noisy = np.asarray(low, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / rel, quality=90)
            (folder / f"{cid}_{k:02d}.jpg").symlink_to(root / rel)
            paths.append(rel)
        records.append(CaptionRecord(cid, f"caption {c}", None, paths))
    write_manifest(root, records)
    return root


def make_cfg(root: Path, args) -> OmegaConf:
    from solo_stablerep.data.config import add_and_assert_synthetic_cfg

    cfg = OmegaConf.create(
        {
            "method": "stablerep",
            "seed": 0,
            "augmentations": OmegaConf.load(
                REPO / "scripts/pretrain/synthetic/augmentations/one_crop.yaml"
            ),
            "data": {
                "dataset": "synthetic",
                "train_path": str(root),
                "val_path": None,
                "format": "image_folder",
                "num_workers": args.workers,
                "synthetic": {"n_img": args.n_img},
            },
            "optimizer": {"batch_size": args.batch_captions},
            "dali": {"device": args.dali_device},
        }
    )
    return add_and_assert_synthetic_cfg(cfg)


def torch_loaders(cfg, root: Path):
    from solo.data.pretrain_dataloader import prepare_dataloader, prepare_datasets

    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.data.transforms import build_image_transform

    multi = prepare_synthetic_train_data(cfg)
    solo_set = prepare_datasets(
        "custom",
        build_image_transform(cfg),
        train_data_path=root / "imagefolder",
        data_format="image_folder",
    )
    # same images per batch: batch_captions x n_img
    solo = prepare_dataloader(
        solo_set,
        batch_size=cfg.optimizer.batch_size * cfg.data.synthetic.n_img,
        num_workers=cfg.data.num_workers,
    )
    return multi, solo


def dali_loaders(cfg, root: Path):
    from nvidia.dali.plugin.pytorch import LastBatchPolicy
    from solo.data.dali_dataloader import PretrainPipelineBuilder, PretrainWrapper

    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.data.transforms import build_image_transform

    cfg.data.format = "dali"
    multi = prepare_synthetic_train_data(cfg).build_loader()
    images_per_batch = cfg.optimizer.batch_size * cfg.data.synthetic.n_img
    gpu = cfg.dali.device == "gpu"
    builder = PretrainPipelineBuilder(
        root / "imagefolder",
        batch_size=images_per_batch,
        device=cfg.dali.device,
        transforms=build_image_transform(cfg, dali=True),
        num_threads=max(1, cfg.data.num_workers),
    )
    pipeline = builder.pipeline(
        batch_size=images_per_batch,
        num_threads=builder.num_threads,
        device_id=0 if gpu else None,
        seed=builder.seed,
    )
    pipeline.build()
    solo = PretrainWrapper(
        model_batch_size=images_per_batch,
        model_rank=0,
        model_device="cuda" if gpu else "cpu",
        dataset_size=pipeline.epoch_size("Reader"),
        pipelines=pipeline,
        output_map=["large0", "label"],
        reader_name="Reader",
        last_batch_policy=LastBatchPolicy.DROP,
        auto_reset=True,
    )
    return multi, solo


def images_per_second(loader, batches: int, warmup: int = 1):
    """Decoded images per second of wall-clock and of this process's CPU time (which counts DALI's
    threads but not DataLoader worker processes) over ``batches`` batches after ``warmup``
    batches."""
    done, images = -warmup, 0
    while done < batches:
        for _, views, _ in loader:
            done += 1
            if done == 0:  # after worker start-up and the warm-up batches
                wall, cpu = time.perf_counter(), time.process_time()
                continue
            images += sum(v.shape[0] for v in views)
            if done == batches:
                break
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def compare(
    name: str, multi, solo, rounds: int, batches: int, cpu_counts_all: bool, warmup: int = 1
) -> None:
    """Rounds alternate the order (AB, BA, ...) so that load drifts cancel; ratios are multi-view /
    solo-learn within a round, reported as their median over rounds. The CPU-time ratio (robust to
    other load on the machine) is shown only when all loading work runs in this process."""
    wall_ratios, cpu_ratios = [], []
    for r in range(rounds):
        order = [("multi", multi), ("solo", solo)][:: 1 if r % 2 == 0 else -1]
        rate = {key: images_per_second(loader, batches, warmup) for key, loader in order}
        wall_ratios.append(rate["multi"][0] / rate["solo"][0])
        cpu_ratios.append(rate["multi"][1] / rate["solo"][1])
        line = (
            f"{name} round {r}: wall multi-view {rate['multi'][0]:.1f} img/s, "
            f"solo-learn {rate['solo'][0]:.1f} img/s, ratio {wall_ratios[-1]:.3f}"
        )
        if cpu_counts_all:
            line += (
                f"; per CPU second multi-view {rate['multi'][1]:.1f}, "
                f"solo-learn {rate['solo'][1]:.1f}, ratio {cpu_ratios[-1]:.3f}"
            )
        print(line)
    summary = f"{name}: median wall-clock ratio {statistics.median(wall_ratios):.3f}"
    if cpu_counts_all:
        summary += f", median CPU-time ratio {statistics.median(cpu_ratios):.3f}"
    print(f"{summary} over {rounds} rounds (multi-view / solo-learn, goal >= 0.95)")
    print(f"RATIO loader_{name} {statistics.median(wall_ratios):.3f} (goal >= 0.95)")


def data_parser(
    description: str, captions: int, rounds: int, batches: int
) -> argparse.ArgumentParser:
    """The arguments of the data (:func:`make_data`), the cfg (:func:`make_cfg`) and the rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--captions", type=int, default=captions)
    parser.add_argument("--images", type=int, default=10, help="images per caption")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--n-img", type=int, default=6)
    parser.add_argument("--batch-captions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--batches", type=int, default=batches, help="timed batches per round")
    parser.add_argument("--dali-device", default="cpu", choices=["cpu", "gpu"])
    return parser


def main():
    parser = data_parser(__doc__.splitlines()[0], captions=128, rounds=6, batches=5)
    parser.add_argument("--loaders", default="all", choices=["all", "pytorch", "dali"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp), args.captions, args.images, args.size)
        cfg = make_cfg(root, args)
        print(
            f"{args.captions} captions x {args.images} JPEGs of {args.size} px, "
            f"n_img {args.n_img}, {args.batch_captions} captions "
            f"({args.batch_captions * args.n_img} images) per batch, "
            f"{args.workers} workers"
        )
        if args.loaders != "dali":
            compare(
                f"pytorch-{args.workers}-workers",
                *torch_loaders(cfg, root),
                args.rounds,
                args.batches,
                cpu_counts_all=args.workers == 0,
            )
        if args.loaders != "dali" and args.workers > 0:
            # in-process loading: CPU time measures the loaders' own cost
            torch.set_num_threads(1)  # as in a DataLoader worker
            cfg.data.num_workers = 0
            compare(
                "pytorch-in-process",
                *torch_loaders(cfg, root),
                args.rounds,
                args.batches,
                cpu_counts_all=True,
            )
            cfg.data.num_workers = args.workers
        if args.loaders != "pytorch":
            multi, solo = dali_loaders(cfg, root)
            # a DALI iterator left between rounds keeps running the prefetch_queue_depth batches it
            # had queued: when the other loader ran in between (every other round, with the
            # alternating order), its next round starts with that many batches made in the other
            # loader's time, and the other loader's queued batches still run in its time. Neither
            # is timed: warm up by both queues' worth of batches.
            depth = max(loader._pipes[0].prefetch_queue_depth for loader in (multi, solo))
            compare(
                f"dali-{args.dali_device}",
                multi,
                solo,
                args.rounds,
                args.batches,
                cpu_counts_all=True,
                warmup=2 * depth,
            )


if __name__ == "__main__":
    main()
