"""Crash-safe files of an output folder, and the merge into the one ``manifest.jsonl``.

Layout (besides the data set itself, ``manifest.jsonl`` + ``images/``)::

    OUT/generation.json                        settings + caption list digest; a rerun must match them
    OUT/shards/shard-00003-of-00008.jsonl      finished captions of shard 3 (append-only, fsynced)
    OUT/shards/shard-00003-of-00008.summary.json
    OUT/contact_sheets/shard-00003-of-00008.png

Every file is written under a temporary name in its own folder, then renamed with ``os.replace``, so a
reader (or a rerun after SIGKILL) sees either the old file or the complete new one. A caption is logged
as finished only after all its images are in place, so the log never claims a missing image.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

from PIL import Image

from solo_stablerep.data.manifest import MANIFEST_NAME, CaptionRecord, write_manifest

from .settings import IMAGE_FORMATS, DataGenError

SETTINGS_NAME = "generation.json"
SHARDS_DIR = "shards"
CONTACT_SHEETS_DIR = "contact_sheets"


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = False) -> None:
    # A fixed temporary name: a rerun after a crash overwrites a leftover instead of adding another.
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode(), fsync=True)


def encode_image(image: Image.Image, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil_format = IMAGE_FORMATS[image_format]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {}
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def read_log(path: Path) -> list[dict]:
    """Entries of a shard log. A last line without its newline is a write cut short: ignored."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # the part after the last newline: empty, or the cut-short line
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise DataGenError(f"{path}:{number}: corrupt log line (not JSON); delete the shard log to redo it") from None
    return entries


class ShardLog:
    """Append-only JSONL record of one shard's finished captions; each append is fsynced."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists():
            data = path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # drop a line cut short by a crash before appending after it
                os.truncate(path, complete)
        self._file = open(path, "ab")

    def append(self, entries: list[dict]) -> None:
        """Append entries with one write and one fsync (an fsync per caption stalls on busy disks)."""
        self._file.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def finished_entries(out: Path) -> dict[int, dict]:
    """Finished captions of every shard log in `out`, by caption index (any shard count, any run)."""
    entries = {}
    for log in sorted((out / SHARDS_DIR).glob("shard-*.jsonl")):
        for entry in read_log(log):
            entries[entry["index"]] = entry
    return entries


def prepare_output(out: Path, stored: dict, overwrite: bool) -> None:
    """Make `out` hold this run: record its settings, or check they match the ones already there.

    A folder from a run with other settings is refused unless `overwrite`, which deletes that run's
    files (only ours: settings, logs, sheets, images, manifest). Same settings means resume.
    """
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS_NAME
    if settings_path.exists():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        same_run = all(previous.get(key) == stored[key] for key in ("settings", "captions_digest"))
        if same_run:
            return
        if not overwrite:
            raise DataGenError(
                f"{out} holds another run ({_describe(previous, stored)}); pass --overwrite to replace it"
            )
        for name in (SHARDS_DIR, CONTACT_SHEETS_DIR, "images"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
    elif (out / MANIFEST_NAME).exists() and not overwrite:
        raise DataGenError(f"{out} holds a data set not made by this tool; pass --overwrite to write over it")
    atomic_write_json(settings_path, stored)


def _describe(previous: dict, stored: dict) -> str:
    """The first few settings that differ, e.g. "guidance_scale 8.0 here 2.0"."""
    old, new = previous.get("settings", {}), stored["settings"]
    changed = [f"{k} {old.get(k)!r} there, {new[k]!r} here" for k in new if old.get(k) != new[k]]
    if previous.get("captions_digest") != stored["captions_digest"]:
        changed.append("other captions")
    return "; ".join(changed[:3])


def merge(out: str | Path) -> Path:
    """Write `out/manifest.jsonl` from the shard logs; refuses while a caption is unfinished."""
    out = Path(out)
    settings_path = out / SETTINGS_NAME
    if not settings_path.exists():
        raise DataGenError(f"{out}: no {SETTINGS_NAME}; not a stablerep-generate output folder")
    stored = json.loads(settings_path.read_text(encoding="utf-8"))
    entries = finished_entries(out)
    missing = [i for i in range(stored["num_captions"]) if i not in entries]
    if missing:
        raise DataGenError(
            f"{out}: {len(missing)} of {stored['num_captions']} captions unfinished (first: index {missing[0]}); "
            "run (or rerun) the shards that own them"
        )
    records = (
        CaptionRecord(e["caption_id"], e["caption"], e["label"], e["images"])
        for e in (entries[i] for i in range(stored["num_captions"]))
    )
    generator = dict(stored["settings"], captions_digest=stored["captions_digest"], versions=stored["versions"])
    return write_manifest(out, records, class_names=stored["class_names"], generator=generator)
