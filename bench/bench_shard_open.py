"""Opening a shard set at paper scale: first open (every tar's index checked, summary written) vs
later opens (the cached summary, one ``stat`` per tar and index).

A shard folder of ``--captions`` captions is synthesised in a temporary folder: ``--per-tar``
samples per tar (json + ``--images`` JPEG members of ~25 kB each, ~250 kB per caption as in the
paper's data, so ~1 GB tars), each tar's DALI ``.idx`` with the offsets a real tar would have, the
tar itself a sparse file of that size (``os.truncate``) holding only its first sample's JSON, and
the header ``webdataset.json``. Then, in this process (page cache warm for all):

1. ``read_tar_index`` of every ``.idx``: the parse the open did before the summary (at least);
2. first open, ``ShardReader(folder)``: checks every index, writes ``webdataset.json.summary``;
3. cached open, ``ShardReader(folder)`` again (median of ``--repeats``).

    python bench/bench_shard_open.py [--captions 1000000 --per-tar 4000 --images 10]

Prints the times and ``RATIO shard_open_cached_vs_first`` (goal <= 0.05). The folder is deleted.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

TAR_BLOCK = 512


def caption_id(i: int) -> str:
    return f"{i * 2654435761 % (1 << 32):08x}{i:07d}"  # hashed prefix, as the generator's ids


def write_tar_and_index(tar: Path, first: int, count: int, images: int, run_id: str) -> int:
    """Index of ``count`` samples (caption ``first`` on) at the offsets of a real tar, and the tar
    as a sparse file holding its first sample's JSON; returns the tar's size."""
    from solo_stablerep.data.shards import TAR_INDEX_VERSION, image_component, tar_index_path

    components = [image_component(k, "jpg") for k in range(images)]
    lines, position = [f"{TAR_INDEX_VERSION} {count}"], 0
    first_json = b""
    for i in range(first, first + count):
        cid = caption_id(i)
        meta = json.dumps(
            {
                "caption_id": cid,
                "caption": "a photo of a red house by the lake at sunset",
                "label": None,
                "index": i,
                "run_id": run_id,
                "num_images": images,
            }
        ).encode()
        first_json = first_json or meta
        members = []
        for component, size in [("json", len(meta))] + [
            (c, 20000 + (i * 7919 + k * 104729) % 10000) for k, c in enumerate(components)
        ]:
            offset = position + TAR_BLOCK  # past the member's header block
            members.append(f"{component} {offset} {size} {cid}.{component}")
            position = offset + -(-size // TAR_BLOCK) * TAR_BLOCK
        lines.append(" ".join(members))
    tar_index_path(tar).write_text("\n".join(lines) + "\n")
    with open(tar, "wb") as f:
        f.seek(TAR_BLOCK)
        f.write(first_json)
        os.truncate(f.fileno(), position + 2 * TAR_BLOCK)  # end-of-archive blocks
    return position + 2 * TAR_BLOCK


def make_folder(folder: Path, captions: int, per_tar: int, images: int) -> int:
    from solo_stablerep.data.shards import HEADER_NAME, make_header

    folder.mkdir()
    run_id = "bench-run"
    (folder / HEADER_NAME).write_text(
        json.dumps(make_header(run_id, captions, images, "jpg", None, {"bench": True}))
    )
    tars, total_bytes = 0, 0
    for first in range(0, captions, per_tar):
        total_bytes += write_tar_and_index(
            folder / f"shard-{tars:06d}.tar", first, min(per_tar, captions - first), images, run_id
        )
        tars += 1
    print(
        f"{captions} captions in {tars} tars of {total_bytes / tars / 1e9:.2f} GB (sparse), "
        f"indexes {sum(p.stat().st_size for p in folder.glob('*.idx')) / 1e6:.0f} MB"
    )
    return tars


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--per-tar", type=int, default=4000, help="samples per tar")
    parser.add_argument("--images", type=int, default=10, help="images per caption")
    parser.add_argument("--repeats", type=int, default=3, help="cached opens timed")
    args = parser.parse_args()

    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.data.shards import (
        HEADER_NAME,
        SUMMARY_SUFFIX,
        read_tar_index,
        tar_index_path,
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        started = time.perf_counter()
        make_folder(folder, args.captions, args.per_tar, args.images)
        print(f"synthesised in {time.perf_counter() - started:.1f} s")
        tars = sorted(folder.glob("*.tar"))
        parse = sum(timed(lambda tar=tar: read_tar_index(tar_index_path(tar))) for tar in tars)
        print(
            f"read_tar_index of every .idx (the open before the summary, at least): {parse:.2f} s"
        )
        first = timed(lambda: ShardReader(str(folder)))
        summary = folder / (HEADER_NAME + SUMMARY_SUFFIX)
        print(
            "first open (checks every index, writes the summary of "
            f"{summary.stat().st_size / 1e3:.0f} kB): "
            f"{first:.2f} s"
        )
        cached = statistics.median(
            timed(lambda: ShardReader(str(folder))) for _ in range(args.repeats)
        )
        shards = ShardReader(str(folder))
        assert len(shards) == args.captions and shards.fewest_images[0] == args.images
        print(f"cached open (median of {args.repeats}): {cached * 1e3:.1f} ms")
        print(f"RATIO shard_open_cached_vs_first {cached / first:.4f} (goal <= 0.05)")


if __name__ == "__main__":
    main()
