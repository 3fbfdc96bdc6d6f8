"""The on-disk feature cache: features of one (model, data set, split, transform) as ``.npy``.

An entry is three files in the cache folder, named by its *key*, the SHA-256 of what makes the
features what they are (the model's identity: checkpoint content hash and architecture, or
``random:<backbone>``, seed and torch version; the data set's identity: name, resolved root, a
fingerprint of its files; the split; the transform; :data:`CACHE_VERSION`)::

    <key>.features.npy   float32 (N, D), memory-mapped when read
    <key>.labels.npy     (N,) class labels or (N, C) 0/1 targets
    <key>.json           {"version", "key", "identity", "shape", "labels_shape"}, written last

The features are allocated at their full size under a temporary name
(``<key>.features.npy.pending``, :meth:`FeatureCache.create`), filled in place through a memory
map, by one process or by several each writing its rows (:mod:`.features`), then fsynced and
renamed (:meth:`FeatureCache.commit`); the labels and the JSON are written atomically (temporary
name, fsync, rename; :func:`atomic_output`), the JSON last, so an entry without its JSON was never
finished. Reading validates the JSON (version,
key), and opens the arrays with ``allow_pickle=False`` checking their shapes and dtypes: a
truncated file, a file of another version or any foreign file is rebuilt, never trusted. Arrays
only: nothing in the cache can run code. Evaluations may share a cache folder: the process writing
an entry holds its lock (``<key>.lock``, :meth:`FeatureCache.writing`), and one wanting the same
entry waits for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from solo_stablerep.storage import atomic_output, exclusive_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 1
FEATURES_DTYPE = np.dtype("<f4")


def cache_key(identity: dict) -> str:
    text = json.dumps({"version": CACHE_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class FeatureCache:
    """The entries of one cache folder; ``hits`` and ``misses`` count the reads of this object."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return (
            self.root / f"{key}.features.npy",
            self.root / f"{key}.labels.npy",
            self.root / f"{key}.json",
        )

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(features memory map, labels) of a valid entry, else None (counted as a miss)."""
        entry = self._read(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def _read(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        features_path, labels_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
                raise ValueError("another version or another entry")
            features = np.load(features_path, mmap_mode="r", allow_pickle=False)
            labels = np.load(labels_path, allow_pickle=False)
            if (
                features.dtype != FEATURES_DTYPE
                or list(features.shape) != meta["shape"]
                or list(labels.shape) != meta["labels_shape"]
            ):
                raise ValueError(f"shapes {features.shape}, {labels.shape} differ from the JSON")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("feature cache entry %s is unusable (%s): rebuilding it", meta_path, error)
            return None
        return features, labels

    @contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Held by the one process (rank 0 under ``torchrun``) that creates entry ``key``, from
        :meth:`create` to reading it back: another process extracting the same features (another
        evaluation sharing the cache folder) waits for it, instead of both filling the one pending
        file. The lock is ``<key>.lock``, an empty file left in place."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / f"{key}.lock"
        lock.touch(exist_ok=True)

        def waiting():
            log.info("feature cache entry %s: waiting for another process writing it", key)

        with exclusive_lock(lock, on_wait=waiting):
            yield

    def written_meanwhile(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The entry :meth:`load` missed, if another process wrote it since (counted as a hit
        then, not a miss); call it under :meth:`writing`."""
        entry = self._read(key)
        if entry is not None:
            self.misses -= 1
            self.hits += 1
        return entry

    def _pending_path(self, key: str) -> Path:
        return self.root / f"{key}.features.npy.pending"

    def create(self, key: str, num_items: int, dim: int) -> np.memmap:
        """The features file of a new entry, allocated (``num_items`` x ``dim`` float32) under a
        temporary name and memory-mapped for writing rows in place; any stale one is replaced. Not
        an entry until :meth:`commit`."""
        self.root.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(
            self._pending_path(key), mode="w+", dtype=FEATURES_DTYPE, shape=(num_items, dim)
        )

    def open_pending(self, key: str) -> np.memmap:
        """The features file :meth:`create` allocated (by another process), for writing rows."""
        return np.lib.format.open_memmap(self._pending_path(key), mode="r+")

    def commit(self, key: str, identity: dict, labels: np.ndarray) -> None:
        """Makes the pending features, all rows written and flushed by their writers, an entry:
        fsynced and renamed, the labels written, the JSON last."""
        features_path, labels_path, meta_path = self._paths(key)
        pending = self._pending_path(key)
        meta_path.unlink(missing_ok=True)  # an older, unusable entry of this key is gone first
        features = np.load(pending, mmap_mode="r", allow_pickle=False)
        shape = list(features.shape)
        del features
        with open(pending, "rb+") as f:  # the rows of every writer: one page cache per file
            os.fsync(f.fileno())
        os.replace(pending, features_path)
        with atomic_output(labels_path) as f:
            np.save(f, labels, allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "identity": identity,
            "shape": shape,
            "labels_shape": list(labels.shape),
        }
        with atomic_output(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, default=str)

    def discard(self, key: str) -> None:
        """Removes the pending features of an entry that will not be committed."""
        self._pending_path(key).unlink(missing_ok=True)

    def read_back(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The entry just written (memory-mapped)."""
        entry = self._read(key)
        if entry is None:
            raise RuntimeError(f"feature cache entry {key} unreadable right after writing it")
        return entry
