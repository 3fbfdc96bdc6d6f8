"""Caption index at paper scale: open time and memory through the training path, worker memory,
merge.

On a version-1 manifest of ``--captions`` captions x ``--images`` images (rule paths, cc12m-like
caption lengths) written to a temporary folder, each step in a fresh process:

1. the training path (``parse_pretrain_cfg`` then ``prepare_train_data``, config
   ``scripts/pretrain/synthetic/stablerep.yaml``) on the unindexed manifest (cold build: the first
   open builds the index) and again (later open), timing it (wall and process CPU time) and the
   growth of the process's private memory (USS = Private_Clean + Private_Dirty,
   /proc/self/smaps_rollup) per caption;
2. the authors' plain ``csv.reader`` loop into two lists over the same rows (their CSV layout), run
   right after each open, so that each is compared with an anchor measured under the same load;
3. a DataLoader worker's USS after a few batches and ``gc.collect()``, at ``--small`` captions and
   at ``--captions`` (images exist only for the captions the worker is given);
4. ``stablerep-generate merge`` of a finished run of ``--captions`` captions in 4 part logs: time
   and peak memory growth, against the size of the index it writes.

    python bench/bench_index.py [--captions 1000000] [--small 100000] [--skip-worker] [--skip-merge]

Prints ``RATIO`` lines (goals from issues 10 and 31) and the raw figures. The temporary folder is
deleted.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "a photo of the red house by the lake with mountains behind it at sunset, two dogs running on "
    "a beach near an old wooden boat while people watch from a green hill under clouds"
).split()


def caption_text(i: int) -> str:
    """~100 characters, the length of a typical cc12m caption, varying with i."""
    words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(14 + i % 9)]
    return " ".join(words)[: 100 + i % 40]


def caption_id(i: int) -> str:
    return f"{i * 2654435761 % (1 << 32):08x}{i:07d}"  # hashed prefix: spread over shard folders


def write_manifest_and_csv(root: Path, n: int, images: int) -> None:
    from solo_stablerep.data.manifest import FORMAT_NAME, MANIFEST_NAME, image_relpath

    root.mkdir(parents=True)
    with (
        open(root / MANIFEST_NAME, "w", encoding="utf-8") as m,
        open(root / "captions.csv", "w", newline="", encoding="utf-8") as c,
    ):
        m.write(
            json.dumps(
                {
                    "format": FORMAT_NAME,
                    "version": 1,
                    "num_captions": n,
                    "class_names": None,
                    "generator": {"bench": True},
                }
            )
            + "\n"
        )
        writer = csv.writer(c)
        for i in range(n):
            cid, text = caption_id(i), caption_text(i)
            paths = [image_relpath(cid, k, "jpg") for k in range(images)]
            m.write(
                json.dumps(
                    {"caption_id": cid, "caption": text, "label": None, "images": paths},
                    ensure_ascii=False,
                )
                + "\n"
            )
            writer.writerow([paths[0], text])
    for path in [image_relpath(caption_id(0), k, "jpg") for k in range(images)]:
        # the reader opens the first caption's images when the set is opened (a wrong root is one
        # line there, not a warning per image)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), (0, 0, 90)).save(root / path)


USS = """
def uss():
    fields = dict(l.split(":", 1) for l in open("/proc/self/smaps_rollup").read().splitlines()[1:])
    kib = lambda key: int(fields[key].split()[0])
    return 1024 * (kib("Private_Clean") + kib("Private_Dirty")), 1024 * kib("Private_Dirty")
"""

TRAINING_PATH = (
    USS
    + """
import gc, json, sys, time
from hydra import compose, initialize_config_dir
from solo_stablerep.pretrain import parse_pretrain_cfg, prepare_train_data

root = sys.argv[1]
overrides = [f"data.train_path={root}", "devices=1", "accelerator=cpu", "strategy=auto",
             "precision=32", "sync_batchnorm=False", "data.num_workers=0", "dali.device=cpu",
             "optimizer.batch_size=256",
             "wandb.enabled=False", "checkpoint.enabled=False"]
with initialize_config_dir(config_dir=sys.argv[2], version_base="1.2"):
    cfg = compose(config_name="stablerep.yaml", overrides=overrides)
gc.collect()
before = uss()
start, cpu_start = time.perf_counter(), time.process_time()
loader = prepare_train_data(parse_pretrain_cfg(cfg))
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
gc.collect()
after = uss()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                  "uss_growth": after[0] - before[0],
                  "dirty_growth": after[1] - before[1],
                  "captions": len(loader.dataset.reader)}))
"""
)

WORKER = (
    USS
    + """
import gc, json, os, sys
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler
from hydra import compose, initialize_config_dir
from solo_stablerep.pretrain import parse_pretrain_cfg, prepare_train_data

class MeasuredItems(Dataset):
    # the training path's stream; the worker records its USS after `after` items and gc.collect()
    def __init__(self, dataset, after, out):
        self.dataset, self.after, self.out, self.seen = dataset, after, out, 0
    def __len__(self):
        return len(self.dataset.reader)
    def __getitem__(self, i):
        item = self.dataset.item(i)  # caption i's row, as the loader makes it
        self.seen += 1
        if self.seen == self.after:
            gc.collect()
            json.dump(uss(), open(self.out, "w"))
        return item

root, config_dir, subset, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
overrides = [f"data.train_path={root}", "devices=1", "accelerator=cpu", "strategy=auto",
             "precision=32", "sync_batchnorm=False", "data.num_workers=1", "dali.device=cpu",
             "optimizer.batch_size=8",
             "augmentations.0.crop_size=32", "wandb.enabled=False", "checkpoint.enabled=False"]
with initialize_config_dir(config_dir=config_dir, version_base="1.2"):
    cfg = compose(config_name="stablerep.yaml", overrides=overrides)
dataset = prepare_train_data(parse_pretrain_cfg(cfg)).dataset
loader = DataLoader(MeasuredItems(dataset, 4 * 8, out), batch_size=8, num_workers=1,
                    sampler=SubsetRandomSampler(subset), drop_last=True)
for _ in loader:
    pass
print(open(out).read())
"""
)

MERGE = """
import json, sys, time
from data_gen.output import merge

def status(key):
    line = next(line for line in open("/proc/self/status") if line.startswith(key + ":"))
    return 1024 * int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the resident size
before = status("VmRSS")
start = time.perf_counter()
merge(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "peak_growth": status("VmHWM") - before}))
"""


def run_json(script: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if result.returncode != 0:
        sys.exit(f"bench_index: step failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def csv_reader_loop(path: Path) -> dict:
    """The authors' data set start-up: a plain csv.reader loop into two Python lists; its wall and
    process CPU time."""
    start, cpu_start = time.perf_counter(), time.process_time()
    images, captions = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            images.append(row[0])
            captions.append(row[1])
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


def training_path(root: Path, n: int) -> None:
    config_dir = REPO / "scripts" / "pretrain" / "synthetic"
    first = run_json(TRAINING_PATH, root, config_dir)
    first_csv = csv_reader_loop(root / "captions.csv")
    later = run_json(TRAINING_PATH, root, config_dir)
    later_csv = csv_reader_loop(root / "captions.csv")
    index_size = (root / "manifest.jsonl.index").stat().st_size
    print(
        f"captions {n}: manifest {(root / 'manifest.jsonl').stat().st_size / 2**20:.0f} MiB, "
        f"index {index_size / 2**20:.0f} MiB ({index_size / n:.0f} B per caption)"
    )
    for name, step, anchor in (
        ("cold build (first open, builds the index)", first, first_csv),
        ("later open", later, later_csv),
    ):
        print(
            f"{name}: {step['seconds']:.2f} s wall, {step['cpu_seconds']:.2f} s CPU | "
            f"authors' csv.reader loop over the same rows right after it: "
            f"{anchor['seconds']:.2f} s wall, {anchor['cpu_seconds']:.2f} s CPU | "
            f"ratio {step['seconds'] / anchor['seconds']:.2f} wall, "
            f"{step['cpu_seconds'] / anchor['cpu_seconds']:.2f} CPU"
        )
        print(
            f"{name}: private memory +{step['uss_growth'] / n:.1f} B per caption "
            f"(dirty +{step['dirty_growth'] / n:.1f} B)"
        )
    print(f"RATIO index_cold_build_seconds {first['seconds']:.2f} (goal <= 12)")
    print(f"RATIO index_cold_build_cpu_seconds {first['cpu_seconds']:.2f} (goal <= 12)")
    print(
        "RATIO index_cold_build_over_csv_reader_cpu "
        f"{first['cpu_seconds'] / first_csv['cpu_seconds']:.2f}"
    )
    print(f"RATIO index_later_open_seconds {later['seconds']:.2f} (goal <= 3)")
    print(
        "RATIO index_later_open_over_csv_reader "
        f"{later['seconds'] / later_csv['seconds']:.3f} (goal <= 3)"
    )
    print(
        "RATIO index_open_private_bytes_per_caption "
        f"{max(first['uss_growth'], later['uss_growth']) / n:.1f} "
        f"(goal <= 64)"
    )


def worker_memory(root: Path, small_root: Path, images: int) -> None:
    from solo_stablerep.data.manifest import image_relpath

    config_dir = REPO / "scripts" / "pretrain" / "synthetic"
    measured = {}
    for path in (small_root, root):
        n = sum(1 for _ in open(path / "manifest.jsonl")) - 1
        subset = sorted({(j * 7919 * 104729) % n for j in range(64)})  # spread over the whole index
        for i in subset:  # images only for the captions the worker reads
            for k in range(images):
                target = path / image_relpath(caption_id(i), k, "jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (48, 48), (i % 256, k * 20, 90)).save(target)
        if not (path / "manifest.jsonl.index").exists():
            run_json(TRAINING_PATH, path, config_dir)  # build the index first, as training would
        measured[n] = run_json(WORKER, path, config_dir, json.dumps(subset), path / "worker.json")
        print(
            f"DataLoader worker at {n} captions: USS {measured[n][0] / 2**20:.1f} MiB "
            f"(dirty {measured[n][1] / 2**20:.1f} MiB)"
        )
    small, large = sorted(measured)
    # USS also counts clean page-cache pages of the index that only this worker maps (the kernel
    # maps
    # 64 KiB around each page touched): bounded by the items read, shared as soon as another process
    # maps them; private dirty memory is what a worker really holds alone
    print(
        f"RATIO worker_uss_{large}_over_{small} "
        f"{measured[large][0] / measured[small][0]:.3f} (goal <= 1.1)"
    )
    print(
        f"RATIO worker_private_dirty_{large}_over_{small} "
        f"{measured[large][1] / measured[small][1]:.3f} "
        f"(goal <= 1.1)"
    )


def merge_run(tmp: Path, n: int, images: int) -> None:
    from solo_stablerep.data.manifest import image_relpath

    out = tmp / "generated"
    (out / "shards").mkdir(parents=True)
    shards = 4
    logs = [
        open(out / "shards" / f"shard-{s:05d}-of-{shards:05d}.jsonl", "w", encoding="utf-8")
        for s in range(shards)
    ]
    for i in range(n):
        cid = caption_id(i)
        entry = {
            "index": i,
            "caption_id": cid,
            "caption": caption_text(i),
            "label": None,
            "images": [image_relpath(cid, k, "jpg") for k in range(images)],
        }
        logs[i % shards].write(json.dumps(entry, ensure_ascii=False) + "\n")
    for log in logs:
        log.close()
    (out / "generation.json").write_text(
        json.dumps(
            {
                "settings": {"bench": True},
                "captions_digest": "bench",
                "num_captions": n,
                "class_names": None,
                "versions": {},
            }
        )
    )
    result = run_json(MERGE, out)
    index_size = (out / "manifest.jsonl.index").stat().st_size
    print(
        f"merge of {n} captions from {shards} shard logs: {result['seconds']:.1f} s, peak memory "
        f"+{result['peak_growth'] / n:.0f} B per caption "
        f"(index file {index_size / n:.0f} B per caption)"
    )
    print(f"RATIO merge_seconds {result['seconds']:.1f}")
    print(
        "RATIO merge_peak_memory_over_index_size "
        f"{result['peak_growth'] / index_size:.2f} (goal <= 3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument(
        "--small", type=int, default=100_000, help="captions of the smaller worker run"
    )
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--skip-merge", action="store_true")
    parser.add_argument(
        "--tmp", default=None, help="parent folder of the temporary data (default: system temp)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.tmp))
    try:
        root = tmp / "large"
        write_manifest_and_csv(root, args.captions, args.images)
        training_path(root, args.captions)
        if not args.skip_worker:
            write_manifest_and_csv(tmp / "small", args.small, args.images)
            worker_memory(root, tmp / "small", args.images)
        if not args.skip_merge:
            merge_run(tmp, args.captions, args.images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
