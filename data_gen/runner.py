"""One shard of a generation run: captions in, images + shard log out, merge when every shard is done."""

from __future__ import annotations

import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from PIL import Image, ImageDraw

from solo_stablerep.data.manifest import image_relpath

from .backends import load_backend
from .captions import Caption, load_captions
from .settings import DataGenError, GenerationSettings, image_seed, resolve_device, resolve_shard
from .storage import (
    CONTACT_SHEETS_DIR,
    SHARDS_DIR,
    ShardLog,
    atomic_write_bytes,
    atomic_write_json,
    encode_image,
    finished_mask,
    iter_log,
    merge,
    prepare_output,
    shard_name,
)


@dataclass
class RunOptions:
    """How to run; unlike `GenerationSettings`, none of it changes the images."""

    batch_size: int = 4  # captions per pipeline call, each giving images_per_caption images
    num_shards: int | None = None
    shard_index: int | None = None
    device: str | None = None
    overwrite: bool = False
    skip_bad_lines: bool = False
    caption_column: str = "caption"
    label_column: str | None = None
    contact_sheet_captions: int = 6
    merge: bool = True  # write the manifest when the last shard finishes
    progress: bool = True


def _versions() -> dict:
    found = {}
    for package in ("torch", "diffusers", "transformers", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _save_caption(out: Path, caption: Caption, images: list[Image.Image], settings: GenerationSettings) -> dict:
    """Resize, encode and atomically write a caption's images; returns its log entry."""
    paths = []
    for k, image in enumerate(images):
        relpath = image_relpath(caption.caption_id, k, settings.image_format)
        if image.size != (settings.image_size, settings.image_size):
            image = image.resize((settings.image_size, settings.image_size), Image.LANCZOS)
        target = out / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, encode_image(image.convert("RGB"), settings.image_format, settings.quality))
        paths.append(relpath)
    return {"index": caption.index, "caption_id": caption.caption_id, "caption": caption.text,
            "label": caption.label, "images": paths}


def _write_batch(out, batch, images, settings, log: ShardLog) -> None:
    entries = [_save_caption(out, caption, caption_images, settings) for caption, caption_images in zip(batch, images)]
    log.append(entries)  # only once every file of the batch is in place


def run_batches(backend, out: Path, todo: list[Caption], settings: GenerationSettings, batch_size: int,
                log: ShardLog, progress) -> int:
    """Generate and save `todo`, `batch_size` captions per model call; returns how many were truncated."""
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
            pending = writer.submit(_write_batch, out, batch, images, settings, log)
            progress.update(len(batch) * k)
        if pending is not None:
            pending.result()
    return truncated


def contact_sheet(
    out: Path, entries: list[dict], thumb: int = 96, text_width: int = 220, max_columns: int = 12
) -> Image.Image:
    """Grid of captions (rows, with their text) × their first ``max_columns`` images (columns), read
    back from disk (a caption with 100 images would make a sheet 10,000 px wide)."""
    columns = min(max_columns, max(len(e["images"]) for e in entries))
    sheet = Image.new("RGB", (text_width + columns * (thumb + 4), len(entries) * (thumb + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, entry in enumerate(entries):
        y = row * (thumb + 4)
        lines = textwrap.wrap(entry["caption"], width=text_width // 7)[: thumb // 12]
        draw.multiline_text((4, y + 4), "\n".join(lines), fill="black", spacing=2)
        for col, relpath in enumerate(entry["images"][:columns]):
            with Image.open(out / relpath) as image:
                sheet.paste(image.convert("RGB").resize((thumb, thumb)), (text_width + col * (thumb + 4), y + 2))
    return sheet


def generate(
    captions_path: str | Path, out: str | Path, settings: GenerationSettings, options: RunOptions | None = None
) -> dict:
    """Generate this process's shard into `out`; returns the summary (also written next to the shard log)."""
    started = time.time()
    options = options or RunOptions()
    out = Path(out)
    settings.validate()
    if options.batch_size < 1:
        raise DataGenError(f"--batch-size {options.batch_size}: must be >= 1")
    num_shards, shard_index = resolve_shard(options.num_shards, options.shard_index)
    device = resolve_device(options.device)
    settings = settings.resolved(device)
    captions = load_captions(
        captions_path,
        skip_bad_lines=options.skip_bad_lines,
        caption_column=options.caption_column,
        label_column=options.label_column,
    )
    prepare_output(
        out,
        {
            "settings": settings.to_dict(),
            "captions_digest": captions.digest,
            "num_captions": len(captions.captions),
            "class_names": captions.class_names,
            "captions_file": str(captions_path),
            "versions": _versions(),
        },
        options.overwrite,
    )

    name = shard_name(shard_index, num_shards)
    log_path = out / SHARDS_DIR / f"{name}.jsonl"
    mine = captions.captions[shard_index::num_shards]
    done = finished_mask(log_path, len(captions.captions))  # this shard's own log only
    todo = [c for c in mine if not done[c.index]]
    k = settings.images_per_caption
    truncated = 0
    if todo:
        backend = load_backend(settings, device)
        log = ShardLog(log_path)
        progress = _progress_bar(len(mine) * k, (len(mine) - len(todo)) * k, name, options.progress)
        truncated = run_batches(backend, out, todo, settings, options.batch_size, log, progress)
        log.close()
        progress.close()

    summary = {
        "shard": name,
        "device": device,
        **captions.stats(),
        "captions_in_shard": len(mine),
        "captions_generated": len(todo),
        "captions_already_done": len(mine) - len(todo),
        "images_written": len(todo) * k,
        "captions_truncated": truncated,
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(out / SHARDS_DIR / f"{name}.summary.json", summary)
    wanted = {c.index for c in mine[: options.contact_sheet_captions]}
    shown = [entry for entry in iter_log(log_path) if entry["index"] in wanted] if log_path.exists() else []
    if shown:
        sheet_path = out / CONTACT_SHEETS_DIR / f"{name}.png"
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(sheet_path, encode_image(contact_sheet(out, shown), "png", 100))
    # a shard's summary is written once all its captions are: the last shard to finish merges
    summaries = (out / SHARDS_DIR / f"{shard_name(s, num_shards)}.summary.json" for s in range(num_shards))
    if options.merge and all(path.exists() for path in summaries):
        summary["manifest"] = str(merge(out))
    return summary


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=name, disable=not enabled, file=sys.stderr,
                smoothing=0.05, dynamic_ncols=True)
