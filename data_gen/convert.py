"""Convert a manifest or authors' CSV data set into WebDataset shards, without regenerating.

``stablerep-generate convert SRC OUT [--layout manifest|authors] [--csv rows.csv --roots r0 ...]``

The source is read through its caption index (:mod:`solo_stablerep.data.index`) and the images'
bytes are copied unchanged (no re-encoding), one caption at a time, so memory does not grow with the
captions or the images; a killed conversion resumes where its last finished tar ended (see
:mod:`data_gen.shards`). The shard run id is a digest of the source's description (the SHA-256 of
the manifest's or CSV's content, streamed, and the roots), so converting the same source again
resumes, and another source, or the same one edited (a caption or a label changed, even keeping the
file's size), is refused (or, with ``--overwrite``, converted afresh). The images are not hashed: an
image replaced in the source is not noticed, convert into a new folder then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from solo_stablerep.console import ArgumentParser, positive_float
from solo_stablerep.data.shards import make_header
from solo_stablerep.errors import DataGenError
from solo_stablerep.storage import file_sha256, json_digest

from .output import check_writable
from .shards import DEFAULT_SHARD_BYTES, ShardWriter, shard_bytes


@dataclass
class SourceCaption:
    caption_id: str
    caption: str
    label: int | None
    images: list[Path]


@dataclass
class Source:
    """A data set to convert: its description and a one-pass reader of its captions."""

    description: dict  # what identifies the source (hashed into the run id)
    num_captions: int
    class_names: list[str] | None
    captions: Iterator[SourceCaption]


def _identity(path: Path) -> dict:
    """What identifies a source file: its size and the SHA-256 of its content (about 1 s per GB:
    a manifest of 10M captions is a few GB, copying its images takes far longer)."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def open_source(
    src: Path,
    layout: str,
    csv_name: str | None = None,
    roots: Sequence[str] = (),
    csv_header: bool = False,
) -> Source:
    """The source data set through its caption index (memory-mapped, built on first open), so a
    conversion of 10M captions holds no Python object per caption.

    ``layout`` is ``manifest`` (``src`` holds ``manifest.jsonl``) or ``authors`` (``src`` is the
    base folder of ``csv_name`` and ``roots``; image k of a row is ``roots[k]/<path>``; caption id =
    the row's 1-based line number, as the training loader numbers them).
    """
    from solo_stablerep.data.index import CaptionIndex
    from solo_stablerep.data.manifest import MANIFEST_NAME

    if layout not in ("manifest", "authors"):
        raise DataGenError(f"--layout {layout}: choose manifest or authors")
    if layout == "authors" and (not csv_name or not roots):
        raise DataGenError("--layout authors needs --csv and --roots")
    if layout == "manifest":
        index = CaptionIndex.from_manifest(src)
        description = {"layout": layout, "source": _identity(src / MANIFEST_NAME)}
    else:
        index = CaptionIndex.from_authors_csv(
            src / csv_name, [src / r for r in roots], header=csv_header
        )
        description = {"layout": layout, "source": _identity(src / csv_name), "roots": list(roots)}

    def captions() -> Iterator[SourceCaption]:
        for i in range(len(index)):
            label = int(index.labels[i])
            yield SourceCaption(
                index.caption_ids[i],
                index.captions[i],
                None if label < 0 else label,
                [index.image_path(i, k) for k in range(index.num_images(i))],
            )

    return Source(
        description=description,
        num_captions=len(index),
        class_names=index.class_names,
        captions=captions(),
    )


def convert(
    src,
    out,
    layout: str = "manifest",
    csv_name: str | None = None,
    roots: Sequence[str] = (),
    csv_header: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the shards of data set ``src`` into ``out``; returns a summary."""
    src, out = Path(src), Path(out)
    check_writable(out)
    source = open_source(src, layout, csv_name, roots, csv_header)
    run_id = json_digest(source.description)
    from tqdm.auto import tqdm

    writer = None
    skipped = written = 0
    bar = tqdm(
        total=source.num_captions,
        unit="caption",
        desc="convert",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for index, caption in enumerate(source.captions):
            ext = caption.images[0].suffix.lstrip(".").lower()
            if writer is None:  # the header needs the first caption's image count and format
                header = make_header(
                    run_id,
                    source.num_captions,
                    len(caption.images),
                    ext,
                    source.class_names,
                    {"converted_from": str(src), **source.description},
                )
                writer = ShardWriter(out, header, max_bytes=shard_bytes, overwrite=overwrite)
            bar.update()
            if writer.done[index]:
                skipped += 1
                continue
            if any(p.suffix.lstrip(".").lower() != ext for p in caption.images):
                raise DataGenError(
                    f"caption {caption.caption_id}: images of several formats; a shard set "
                    f"holds one ({ext})"
                )
            try:
                images = [p.read_bytes() for p in caption.images]
            except FileNotFoundError as e:
                raise DataGenError(
                    f"{e.filename}: image file missing (caption {caption.caption_id})"
                ) from None
            writer.write(index, caption.caption_id, caption.caption, caption.label, images)
            written += 1
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.close(finish=False)  # the tar in progress is redone by the next run
        raise
    finally:
        bar.close()
    return {
        "out": str(out),
        "run_id": run_id,
        "captions": source.num_captions,
        "captions_written": written,
        "captions_already_done": skipped,
    }


def main(argv: Sequence[str]) -> None:
    """``stablerep-generate convert`` (the arguments after ``convert``)."""
    p = ArgumentParser(
        prog="stablerep-generate convert",
        description="Convert a manifest or authors' CSV data set into WebDataset shards.",
    )
    p.add_argument(
        "src", help="data set root (manifest layout) or base folder of --csv and --roots"
    )
    p.add_argument("out", help="shard folder")
    p.add_argument("--format", choices=["webdataset"], default="webdataset")
    p.add_argument("--layout", choices=["manifest", "authors"], default="manifest")
    p.add_argument(
        "--csv", default=None, help="authors' layout: CSV of path,caption rows (relative to SRC)"
    )
    p.add_argument(
        "--csv-header", action="store_true", help="authors' layout: the CSV has a header row"
    )
    p.add_argument(
        "--roots", nargs="+", default=[], help="authors' layout: one image root per seed"
    )
    p.add_argument(
        "--shard-size",
        type=positive_float,
        default=DEFAULT_SHARD_BYTES / 1e9,
        help="GB per tar (default ~1)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace shards of another run found in OUT"
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    summary = convert(
        args.src,
        args.out,
        args.layout,
        args.csv,
        args.roots,
        args.csv_header,
        shard_bytes=shard_bytes(args.shard_size),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
