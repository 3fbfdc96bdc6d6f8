"""WebDataset shards vs the manifest layout: decoded multi-view items per second, and files on disk.

The same JPEGs (a manifest data set, then ``stablerep-generate convert`` into tars) are read through
the same augmentations (``one_crop.yaml``), the same n_img, batch size and worker count, by the
manifest loaders and the shard loaders, PyTorch and DALI (CPU pipelines unless --dali-device gpu).
Rounds of the two layouts alternate (AB, BA, ...) so that load on the shared machine affects both
alike; each RATIO is the median over rounds of shards / manifest items per second (goal >= 1.0).

The DALI sources (the Python code that reads and checks the encoded images, in the training
process) are also timed alone, in CPU time per batch.

Files on disk for 10k captions x 10 images: the manifest layout holds one file per image plus the
manifest; the shard layout holds two files (tar + index) per ~1 GB tar plus a header and a record
log. The tar count is extrapolated from the bytes per sample measured in this run's shards.

    python bench/bench_shards.py [--captions 256 --n-img 6 --workers 2 --rounds 8 --batches 64]

Rounds of 64 batches: with 16, single rounds of two identical loaders (an A/A run) ranged over
0.97-1.03, too wide to tell a 2 % difference; the defaults take ~4 minutes on 2 cores.
"""

import math
import statistics
import tempfile
import time
from pathlib import Path

from bench_loader import (
    data_parser,
    make_cfg,
    make_data,
)  # same data and cfg as the loader benchmark

from data_gen.convert import convert
from data_gen.shards import DEFAULT_SHARD_BYTES, read_records


def items_per_second(loader, batches: int, warmup: int) -> float:
    """Captions (multi-view items) per second over ``batches`` batches after ``warmup`` batches."""
    done, items = -warmup, 0
    while done < batches:
        for indexes, _, _ in loader:
            done += 1
            if done == 0:
                start = time.perf_counter()
                continue
            if done > 0:
                items += len(indexes)
            if done == batches:
                break
    return items / (time.perf_counter() - start)


def compare(name: str, manifest, shards, rounds: int, batches: int, warmup: int) -> None:
    ratios = []
    for r in range(rounds):
        order = [("manifest", manifest), ("shards", shards)][:: 1 if r % 2 == 0 else -1]
        rate = {key: items_per_second(loader, batches, warmup) for key, loader in order}
        ratios.append(rate["shards"] / rate["manifest"])
        print(
            f"{name} round {r}: manifest {rate['manifest']:.1f} items/s, "
            f"shards {rate['shards']:.1f} items/s, ratio {ratios[-1]:.3f}"
        )
    print(f"RATIO shards_vs_manifest_{name} {statistics.median(ratios):.3f} (goal >= 1.0)")


def source_ms_per_batch(source, batches: int) -> float:
    """CPU milliseconds a DALI external source spends per batch: it runs in the training process
    beside DALI's threads, so on a busy CPU its time comes out of decoding's."""
    done, start = 0, time.thread_time()
    while done < batches:
        for _ in iter(source):
            done += 1
            if done == batches:
                break
    return (time.thread_time() - start) / batches * 1e3


def compare_dali_sources(
    cfg, manifest_root: Path, shard_root: Path, rounds: int, batches: int
) -> None:
    from solo_stablerep.data.dali import BatchSource
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    sources = {}
    for key, root, layout in (
        ("manifest", manifest_root, "manifest"),
        ("shards", shard_root, "webdataset"),
    ):
        cfg.data.train_path, cfg.data.synthetic.layout = str(root), layout
        data = prepare_synthetic_train_data(cfg)
        sources[key] = BatchSource(data.reader, data.data)
    ratios = []
    for r in range(rounds):
        ms = {
            key: source_ms_per_batch(sources[key], batches)
            for key in ("manifest", "shards")[:: 1 - 2 * (r % 2)]
        }
        ratios.append(ms["shards"] / ms["manifest"])
        print(
            f"dali source round {r}: manifest {ms['manifest']:.2f} ms, "
            f"shards {ms['shards']:.2f} ms CPU per batch, ratio {ratios[-1]:.3f}"
        )
    print(
        "RATIO shards_vs_manifest_dali_source_cpu_per_batch "
        f"{statistics.median(ratios):.3f} (lower is better)"
    )


def loaders(cfg, manifest_root: Path, shard_root: Path, dali: bool):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    built = []
    for root, layout in ((manifest_root, "manifest"), (shard_root, "webdataset")):
        cfg.data.train_path, cfg.data.synthetic.layout = str(root), layout
        data = prepare_synthetic_train_data(cfg)
        built.append(data.build_loader() if dali else data)
    return built


def main():
    parser = data_parser(__doc__.splitlines()[0], captions=256, rounds=8, batches=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        manifest_root = make_data(Path(tmp) / "manifest", args.captions, args.images, args.size)
        shard_root = Path(tmp) / "shards"
        convert(manifest_root, shard_root, shard_bytes=8 << 20, progress=False)
        cfg = make_cfg(manifest_root, args)
        print(
            f"{args.captions} captions x {args.images} JPEGs of {args.size} px, "
            f"n_img {args.n_img}, {args.batch_captions} captions per batch, {args.workers} workers"
        )
        compare(
            f"pytorch-{args.workers}-workers",
            *loaders(cfg, manifest_root, shard_root, dali=False),
            args.rounds,
            args.batches,
            warmup=1,
        )
        cfg.data.format = "dali"
        # DALI iterators keep their prefetch queue running between rounds: warm up past it
        compare(
            f"dali-{args.dali_device}",
            *loaders(cfg, manifest_root, shard_root, dali=True),
            args.rounds,
            args.batches,
            warmup=4,
        )
        compare_dali_sources(cfg, manifest_root, shard_root, args.rounds, 4 * args.batches)

        sample_bytes = sum(r["bytes"] for r in read_records(shard_root)) / args.captions
        captions, images = 10_000, 10
        sample_bytes *= images / args.images
        tars = math.ceil(captions * sample_bytes / DEFAULT_SHARD_BYTES)
        shard_files, manifest_files = 2 * tars + 2, captions * images + 1
        print(
            f"10k captions x 10 images at {sample_bytes / 1e3:.0f} kB per caption: manifest layout "
            f"{manifest_files} files, shards {shard_files} files ({tars} tars of ~1 GB + indexes, "
            "header, record log)"
        )
        print(f"RATIO shards_files_vs_manifest {shard_files / manifest_files:.5f} (goal <= 0.01)")


if __name__ == "__main__":
    main()
