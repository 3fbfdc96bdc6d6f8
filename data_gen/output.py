"""The output folder of a generation run (format ``manifest``): its crash-safe files, and the merge
of the parts' logs into the one ``manifest.jsonl``.

A run is split into parts (processes, ``--num-parts``); part 3 of 8 is named
``part-00003-of-00008``. Layout (besides the data set itself, ``manifest.jsonl`` + ``images/``)::

    OUT/generation.json                      settings + caption list digest; a rerun must match them
    OUT/parts/part-00003-of-00008.jsonl      finished captions of part 3 (append-only, fsynced)
    OUT/parts/part-00003-of-00008.summary.json
    OUT/contact_sheets/part-00003-of-00008.png

Every file is written under a temporary name in its own folder, then renamed with ``os.replace``, so
a reader (or a rerun after SIGKILL) sees either the old file or the complete new one, and each log
is an :class:`~solo_stablerep.storage.AppendLog` (a line cut by a crash is dropped on resume).
A caption is logged as finished only after all its images are in place, so the log never claims a
missing image.

Scale: a part resumes from its own log only, and the merge streams the logs (each in caption order)
into the manifest and its caption index (``manifest.jsonl.index``) with memory that does not grow
with the number of captions beyond the index arrays.
"""

from __future__ import annotations

import heapq
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from solo_stablerep.data.index import CAPTION_INDEX_SUFFIX, write_indexed_manifest
from solo_stablerep.data.manifest import MANIFEST_NAME, CaptionRecord
from solo_stablerep.errors import DataGenError
from solo_stablerep.storage import (
    atomic_write_json,
    exclusive_lock,
    iter_log,
    remove_stale_temps,
)

from .settings import IMAGE_FORMATS

SETTINGS_NAME = "generation.json"
PARTS_DIR = "parts"
CONTACT_SHEETS_DIR = "contact_sheets"


def part_name(part_index: int, num_parts: int) -> str:
    """The name of part ``part_index`` of ``num_parts`` (its log, summary, contact sheet, tars)."""
    return f"part-{part_index:05d}-of-{num_parts:05d}"


def check_writable(out) -> None:
    """One clear line now, not a traceback after the model has loaded (or a copy has begun): can
    `out` (or the nearest folder above it that exists, where it will be created) take new files?
    Probed with a temporary file that leaves no trace."""
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise DataGenError(f"output folder {out}: {folder} is not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise DataGenError(
            f"output folder {out} is not writable ({folder}: {e.strerror or e})"
        ) from None


def encode_image(image: Image.Image, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil_format = IMAGE_FORMATS[image_format]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {}
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def finished_mask(log: Path, num_captions: int) -> np.ndarray:
    """Which captions (by index) a part's log records as finished: one byte per caption."""
    done = np.zeros(num_captions, dtype=bool)
    if log.exists():
        for entry in iter_log(log):
            done[entry["index"]] = True
    return done


_SETTINGS_KEYS = ("settings", "captions_digest", "num_captions", "class_names", "versions")


def read_settings(path: Path, overwrite_hint: bool) -> dict:
    """A run's ``generation.json``, checked; a damaged one (not JSON, not the writer's object) is
    one line naming it and what to do: pass --overwrite (a generation), or rerun the generation."""
    todo = (
        "pass --overwrite to start the run afresh"
        if overwrite_hint
        else "rerun the generation into it"
    )
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataGenError(f"{path}: damaged, not valid JSON ({e}); {todo}") from None
    if not isinstance(stored, dict) or any(key not in stored for key in _SETTINGS_KEYS):
        raise DataGenError(
            f"{path}: damaged, not a generation record (needs {', '.join(_SETTINGS_KEYS)}); {todo}"
        )
    return stored


def prepare_output(out: Path, stored: dict, overwrite: bool) -> None:
    """Make `out` hold this run: record its settings, or check they match the ones already there.

    A folder from a run with other settings is refused unless `overwrite`, which deletes that run's
    files (only ours: settings, logs, sheets, images, manifest). Same settings means resume.
    """
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS_NAME
    with exclusive_lock(out):  # the parts of a run start at once: one at a time checks or writes
        remove_stale_temps(settings_path)  # left by a part killed while writing it
        _prepare_locked(out, settings_path, stored, overwrite)


def _prepare_locked(out: Path, settings_path: Path, stored: dict, overwrite: bool) -> None:
    if settings_path.exists():
        try:
            previous = read_settings(settings_path, overwrite_hint=True)
        except DataGenError:
            if not overwrite:
                raise
            previous = {}  # damaged: replaced like another run's
        same_run = all(previous.get(key) == stored[key] for key in ("settings", "captions_digest"))
        if same_run:
            return
        if not overwrite:
            raise DataGenError(
                f"{out} holds another run ({_describe(previous, stored)}); pass --overwrite to "
                "replace it"
            )
        for name in (PARTS_DIR, CONTACT_SHEETS_DIR, "images"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        (out / (MANIFEST_NAME + CAPTION_INDEX_SUFFIX)).unlink(missing_ok=True)
    elif (out / MANIFEST_NAME).exists() and not overwrite:
        raise DataGenError(
            f"{out} holds a data set not made by this tool; pass --overwrite to write over it"
        )
    atomic_write_json(settings_path, stored)


def _describe(previous: dict, stored: dict) -> str:
    """The first few settings that differ, e.g. "guidance_scale 8.0 here 2.0"."""
    old, new = previous.get("settings", {}), stored["settings"]
    changed = [f"{k} {old.get(k)!r} there, {new[k]!r} here" for k in new if old.get(k) != new[k]]
    if previous.get("captions_digest") != stored["captions_digest"]:
        changed.append("other captions")
    return "; ".join(changed[:3])


def merge(out: str | Path) -> Path:
    """Write `out/manifest.jsonl` and its caption index from the parts' logs; refuses while a
    caption is unfinished. Streams: each log is in caption order, so a k-way merge gives the
    manifest's order."""
    out = Path(out)
    settings_path = out / SETTINGS_NAME
    if not settings_path.exists():
        raise DataGenError(f"{out}: no {SETTINGS_NAME}; not a stablerep-generate output folder")
    stored = read_settings(settings_path, overwrite_hint=False)
    num_captions = stored["num_captions"]
    logs = sorted((out / PARTS_DIR).glob("part-*.jsonl"))
    entries = heapq.merge(*(iter_log(log) for log in logs), key=lambda e: e["index"])

    def records():
        expected = 0
        for entry in entries:
            if entry["index"] < expected:
                continue  # logged twice, by runs with other part counts: same caption and images
            if entry["index"] > expected:
                break
            yield CaptionRecord(
                entry["caption_id"], entry["caption"], entry["label"], entry["images"]
            )
            expected += 1
        if expected < num_captions:
            seen = np.zeros(num_captions, dtype=bool)
            seen[:expected] = True
            for entry in entries:
                seen[entry["index"]] = True
            missing = np.flatnonzero(~seen)
            raise DataGenError(
                f"{out}: {len(missing)} of {num_captions} captions unfinished (first: index "
                f"{missing[0]}); run (or rerun) the parts that own them"
            )

    generator = dict(
        stored["settings"], captions_digest=stored["captions_digest"], versions=stored["versions"]
    )
    return write_indexed_manifest(
        out,
        records(),
        class_names=stored["class_names"],
        generator=generator,
        num_captions=num_captions,
    )
