"""One part (process) of a generation run: captions in, images out through a sink chosen by
``--format``.

- ``manifest``: one file per image + the part's log, merged into ``manifest.jsonl`` (and its caption
  index) when every part is done (:mod:`data_gen.output`);
- ``webdataset``: tar shards written by :class:`data_gen.shards.ShardWriter`, one writer per part
  (tar prefix = the part's name); nothing to merge: the tars are the data set.

The images are the same bytes in both (image k of a caption depends only on seed, caption, k), and
both end with the same contact sheet of the part's first captions (each sink reads its images back).
"""

from __future__ import annotations

import io
import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from PIL import Image, ImageDraw

from solo_stablerep.data.manifest import image_relpath
from solo_stablerep.data.shards import make_header
from solo_stablerep.errors import DataGenError
from solo_stablerep.storage import (
    AppendLog,
    atomic_write_bytes,
    atomic_write_json,
    json_digest,
)

from .backends import load_backend
from .captions import Caption, load_captions
from .output import (
    CONTACT_SHEETS_DIR,
    PARTS_DIR,
    encode_image,
    finished_mask,
    merge,
    part_name,
    prepare_output,
)
from .settings import GenerationSettings, image_seed, resolve_device, resolve_part
from .shards import DEFAULT_SHARD_BYTES, RECORDS_DIR, ShardWriter, read_images


@dataclass
class RunOptions:
    """How to run; unlike `GenerationSettings`, none of it changes the images."""

    batch_size: int = 4  # captions per pipeline call, each giving images_per_caption images
    format: str = "manifest"  # or "webdataset": tar shards
    shard_bytes: int = DEFAULT_SHARD_BYTES  # webdataset: a tar is closed once it reaches this size
    num_parts: int | None = None  # processes of the run (None: from the environment, else 1)
    part_index: int | None = None
    device: str | None = None
    overwrite: bool = False
    skip_bad_lines: bool = False
    caption_column: str = "caption"
    label_column: str | None = None
    contact_sheet_captions: int = 6
    merge: bool = True  # write the manifest when the last part finishes
    progress: bool = True


def _versions() -> dict:
    found = {}
    for package in ("torch", "diffusers", "transformers", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _encode(image: Image.Image, settings: GenerationSettings) -> bytes:
    """An image as saved: resized to ``image_size`` and encoded in ``image_format``."""
    if image.size != (settings.image_size, settings.image_size):
        image = image.resize((settings.image_size, settings.image_size), Image.LANCZOS)
    return encode_image(image.convert("RGB"), settings.image_format, settings.quality)


class FileSink:
    """Format ``manifest``: each image atomically written to its file, then the caption logged in
    the part's log (one fsync per batch); resumes from that log alone."""

    def __init__(self, out: Path, name: str, num_captions: int, settings: GenerationSettings):
        self.out = out
        self.settings = settings
        self.log_path = out / PARTS_DIR / f"{name}.jsonl"
        self.summary_path = out / PARTS_DIR / f"{name}.summary.json"
        self._done = finished_mask(self.log_path, num_captions)  # this part's own log only
        self._log: AppendLog | None = None
        self._entries: list[dict] = []

    def finished(self, index: int) -> bool:
        return bool(self._done[index])

    def write(self, caption: Caption, images: list[Image.Image]) -> None:
        paths = []
        for k, image in enumerate(images):
            relpath = image_relpath(caption.caption_id, k, self.settings.image_format)
            target = self.out / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            # no fsync per image (it stalls busy disks); the caption is logged after its images
            atomic_write_bytes(target, _encode(image, self.settings), fsync=False, sole_writer=True)
            paths.append(relpath)
        self._entries.append(
            {
                "index": caption.index,
                "caption_id": caption.caption_id,
                "caption": caption.text,
                "label": caption.label,
                "images": paths,
            }
        )

    def flush(self) -> None:
        """Logs the captions written since the last flush (only once all their files are in
        place)."""
        if self._log is None:
            self._log = AppendLog(self.log_path)
        self._log.append(self._entries)
        self._entries = []

    def close(self, finished: bool = True) -> None:
        if self._log is not None:
            self._log.close()

    def sheet_rows(self, captions: list[Caption]) -> list[tuple[str, list[Path]]]:
        """Finished captions' rows for :func:`contact_sheet`: their text and image files."""
        m, ext = self.settings.images_per_caption, self.settings.image_format
        return [
            (c.text, [self.out / image_relpath(c.caption_id, k, ext) for k in range(m)])
            for c in captions
        ]


class ShardSink:
    """Format ``webdataset``: samples appended to this process's tars (prefix = the part's name),
    which are renamed and recorded when complete; resumes by skipping the recorded captions."""

    def __init__(
        self, out: Path, name: str, header: dict, settings: GenerationSettings, options: RunOptions
    ):
        self.out = out
        self.settings = settings
        self.summary_path = out / RECORDS_DIR / f"{name}.summary.json"
        self.writer = ShardWriter(
            out, header, prefix=name, max_bytes=options.shard_bytes, overwrite=options.overwrite
        )

    def finished(self, index: int) -> bool:
        return bool(self.writer.done[index])

    def write(self, caption: Caption, images: list[Image.Image]) -> None:
        self.writer.write(
            caption.index,
            caption.caption_id,
            caption.text,
            caption.label,
            [_encode(image, self.settings) for image in images],
        )

    def flush(self) -> None:
        pass  # a tar is committed when it is full (or at close)

    def close(self, finished: bool = True) -> None:
        self.writer.close(finish=finished)  # unfinished: the tar in progress is redone by a rerun

    def sheet_rows(self, captions: list[Caption]) -> list[tuple[str, list[io.BytesIO]]]:
        """Finished captions' rows for :func:`contact_sheet`: their text and encoded images."""
        # Read back from the finished tars rather than kept in memory while generating: on a resumed
        # run these captions may have been generated by an earlier run (or another writer prefix).
        images = read_images(self.out, [c.index for c in captions])
        return [(c.text, [io.BytesIO(data) for data in images[c.index]]) for c in captions]


def _write_batch(sink, batch: list[Caption], images: list[list[Image.Image]]) -> None:
    for caption, caption_images in zip(batch, images, strict=True):
        sink.write(caption, caption_images)
    sink.flush()


def run_batches(
    backend, todo: list[Caption], settings: GenerationSettings, batch_size: int, sink, progress
) -> int:
    """Generate `todo` into `sink`, `batch_size` captions per model call; returns how many were
    truncated."""
    k = settings.images_per_caption
    truncated = 0
    # One writer thread encodes and writes batch b while the model computes batch b + 1.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = None
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            truncated += sum(backend.is_truncated(c.text) for c in batch)
            seeds = [[image_seed(settings.seed, c.caption_id, j) for j in range(k)] for c in batch]
            images = backend.generate([c.text for c in batch], seeds)
            if pending is not None:
                pending.result()  # at most one batch waits for the disk; also re-raises its errors
            pending = writer.submit(_write_batch, sink, batch, images)
            progress.update(len(batch) * k)
        if pending is not None:
            pending.result()
    return truncated


def contact_sheet(
    rows: list[tuple[str, list]], thumb: int = 96, text_width: int = 220, max_columns: int = 12
) -> Image.Image:
    """Grid of captions (rows, with their text) × their first ``max_columns`` images (columns; a
    caption with 100 images would make a sheet 10,000 px wide).

    ``rows`` holds (caption text, images) pairs, an image being anything :func:`PIL.Image.open`
    reads: a file path (manifest layout) or a binary file of its encoded bytes (tar shards).
    """
    columns = min(max_columns, max(len(images) for _, images in rows))
    sheet = Image.new("RGB", (text_width + columns * (thumb + 4), len(rows) * (thumb + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (text, images) in enumerate(rows):
        y = row * (thumb + 4)
        lines = textwrap.wrap(text, width=text_width // 7)[: thumb // 12]
        draw.multiline_text((4, y + 4), "\n".join(lines), fill="black", spacing=2)
        for col, source in enumerate(images[:columns]):
            with Image.open(source) as image:
                sheet.paste(
                    image.convert("RGB").resize((thumb, thumb)),
                    (text_width + col * (thumb + 4), y + 2),
                )
    return sheet


def generate(
    captions_path: str | Path,
    out: str | Path,
    settings: GenerationSettings,
    options: RunOptions | None = None,
) -> dict:
    """Generate this process's part into `out` in ``options.format``; returns the summary (also
    written next to the part's log or tar records)."""
    started = time.time()
    options = options or RunOptions()
    out = Path(out)
    settings.validate()
    if options.batch_size < 1:
        raise DataGenError(f"--batch-size {options.batch_size}: must be >= 1")
    num_parts, part_index = resolve_part(options.num_parts, options.part_index)
    device = resolve_device(options.device)
    settings = settings.resolved(device)
    captions = load_captions(
        captions_path,
        skip_bad_lines=options.skip_bad_lines,
        caption_column=options.caption_column,
        label_column=options.label_column,
        part=(part_index, num_parts),  # Caption objects for this process's captions only
    )
    stored = {
        "settings": settings.to_dict(),
        "captions_digest": captions.digest,
        "num_captions": captions.num_captions,
        "class_names": captions.class_names,
        "captions_file": str(captions_path),
        "versions": _versions(),
    }
    name = part_name(part_index, num_parts)
    sink = _open_sink(out, name, stored, settings, options)
    mine = captions.captions
    todo = [c for c in mine if not sink.finished(c.index)]
    k = settings.images_per_caption
    truncated = 0
    try:
        if todo:
            backend = load_backend(settings, device)
            progress = _progress_bar(
                len(mine) * k, (len(mine) - len(todo)) * k, name, options.progress
            )
            truncated = run_batches(backend, todo, settings, options.batch_size, sink, progress)
            progress.close()
    except BaseException:
        sink.close(finished=False)
        raise
    sink.close()

    summary = {
        "part": name,
        "device": device,
        **captions.stats(),
        "captions_in_part": len(mine),
        "captions_generated": len(todo),
        "captions_already_done": len(mine) - len(todo),
        "images_written": len(todo) * k,
        "captions_truncated": truncated,
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(sink.summary_path, summary, sole_writer=True)  # written by this part only
    shown = mine[
        : options.contact_sheet_captions
    ]  # all finished by now, by this run or an earlier one
    if shown:
        sheet_path = out / CONTACT_SHEETS_DIR / f"{name}.png"
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        sheet = encode_image(contact_sheet(sink.sheet_rows(shown)), "png", 100)
        atomic_write_bytes(sheet_path, sheet, fsync=False, sole_writer=True)
    if options.format == "webdataset":
        return summary  # nothing to merge: the tars are the data set
    # a part's summary is written once all its captions are: the last part to finish merges
    names = (part_name(p, num_parts) for p in range(num_parts))
    summaries = (out / PARTS_DIR / f"{name}.summary.json" for name in names)
    if options.merge and all(path.exists() for path in summaries):
        summary["manifest"] = str(merge(out))
    return summary


def _open_sink(
    out: Path, name: str, stored: dict, settings: GenerationSettings, options: RunOptions
):
    """The output of ``options.format``, checked against a run already in ``out`` (same settings and
    captions: resume; other ones: refused unless ``overwrite``)."""
    if options.format == "manifest":
        prepare_output(out, stored, options.overwrite)
        return FileSink(out, name, stored["num_captions"], settings)
    if options.format != "webdataset":
        raise DataGenError(f"--format {options.format}: choose manifest or webdataset")
    # the run id names what the images depend on: settings and caption list, not versions or paths
    header = make_header(
        json_digest({key: stored[key] for key in ("settings", "captions_digest")}),
        stored["num_captions"],
        settings.images_per_caption,
        settings.image_format,
        stored["class_names"],
        stored,
    )
    return ShardSink(out, name, header, settings, options)


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        desc=name,
        disable=not enabled,
        file=sys.stderr,
        smoothing=0.05,
        dynamic_ncols=True,
    )
