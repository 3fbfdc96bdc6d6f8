"""The on-disk feature cache: features of one (model, data set, split, transform) as ``.npy``.

An entry is three files in the cache folder, named by its *key*, the SHA-256 of what makes the
features what they are (the model's identity: checkpoint content hash and architecture, or
``random:<backbone>``, seed and torch version; the data set's identity: name, resolved root, a
fingerprint of its files; the split; the transform; :data:`CACHE_VERSION`)::

    <key>.features.npy   float32 (N, D), memory-mapped when read
    <key>.labels.npy     (N,) class labels or (N, C) 0/1 targets
    <key>.json           {"version", "key", "identity", "shape", "labels_shape"}, written last

Each file is written atomically (temporary name, fsync, rename; :func:`atomic_output`) and the
JSON last, so an entry without its JSON was never finished. Reading validates the JSON (version,
key), and opens the arrays with ``allow_pickle=False`` checking their shapes and dtypes: a
truncated file, a file of another version or any foreign file is rebuilt, never trusted. Arrays
only: nothing in the cache can run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from solo_stablerep.data.storage import atomic_output

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
    def writer(self, key: str, identity: dict, num_items: int) -> Iterator[_EntryWriter]:
        """Streams an entry's features to disk batch by batch (never all in memory); the entry
        becomes valid when the block ends without error, with the labels the writer was given."""
        self.root.mkdir(parents=True, exist_ok=True)
        features_path, labels_path, meta_path = self._paths(key)
        with atomic_output(features_path) as f:
            writer = _EntryWriter(f, num_items)
            yield writer
            if writer.rows != num_items:
                raise RuntimeError(f"feature extraction wrote {writer.rows} of {num_items} rows")
        with atomic_output(labels_path) as f:
            np.save(f, writer.labels, allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "identity": identity,
            "shape": [num_items, writer.dim],
            "labels_shape": list(writer.labels.shape),
        }
        with atomic_output(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, default=str)

    def read_back(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The entry just written (memory-mapped)."""
        entry = self._read(key)
        if entry is None:
            raise RuntimeError(f"feature cache entry {key} unreadable right after writing it")
        return entry


class _EntryWriter:
    """Writes the ``.npy`` header at the first batch (the feature width is known then), then
    rows."""

    def __init__(self, file, num_items: int):
        self.file = file
        self.num_items = num_items
        self.rows = 0
        self.dim = None
        self.labels = None

    def write(self, features: np.ndarray) -> None:
        features = np.ascontiguousarray(features, dtype=FEATURES_DTYPE)
        if self.dim is None:
            self.dim = features.shape[1]
            header = {
                "descr": FEATURES_DTYPE.str,
                "fortran_order": False,
                "shape": (self.num_items, self.dim),
            }
            np.lib.format.write_array_header_1_0(self.file, header)
        self.file.write(features.tobytes())
        self.rows += len(features)
