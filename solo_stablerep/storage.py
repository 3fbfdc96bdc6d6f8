"""Storage helpers shared by every writer and reader of this project's files - the data sets, the
generator's logs, the evaluation's feature cache and reports (standard library only: ``data_gen``
uses them where nobody trains): atomic writes, the append-only log, the lock and cache paths of
derived files (a caption index, a shard summary), progress lines, file and run identities."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from solo_stablerep.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: concurrent builders may overlap, each still writing atomically
    fcntl = None


# --- atomic writes --------------------------------------------------------------------------


def remove_stale_temps(path: Path) -> None:
    """Removes the temporary files :class:`atomic_output` left beside ``path`` when a writer was
    killed; call it only under the lock the writers of ``path`` take."""
    unique = f".{glob.escape(path.name)}.{'[0-9a-f]' * 12}.tmp"
    for tmp in [*path.parent.glob(unique), path.with_name(f".{path.name}.tmp")]:
        tmp.unlink(missing_ok=True)


class atomic_output:  # lower case: used as a function, ``with atomic_output(path) as f``
    """A file that appears at ``path`` only once written in full (and fsynced), or not at all:
    ``with atomic_output(path, "w", encoding="utf-8") as f: ...`` (an exception removes it), or held
    open with :meth:`commit` / :meth:`discard` (the tar writer). Written under a unique temporary
    name in the same folder, or with ``sole_writer`` the fixed ``.<name>.tmp``, which a rerun after
    a crash overwrites; with the permissions the umask gives new files (``mkstemp``'s 0600 would
    lock colleagues out of a data set). ``fsync=False``: many small files a log double-checks."""

    def __init__(
        self,
        path: Path,
        mode: str = "wb",
        *,
        fsync: bool = True,
        sole_writer: bool = False,
        **open_kwargs,
    ):
        self.path = Path(path)
        name = "" if sole_writer else f".{secrets.token_hex(6)}"
        self.tmp = self.path.with_name(f".{self.path.name}{name}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
        flags |= os.O_TRUNC if sole_writer else os.O_EXCL
        self.file = os.fdopen(os.open(self.tmp, flags, 0o666), mode, **open_kwargs)
        self._fsync = fsync

    def commit(self) -> None:
        try:
            self.file.flush()
            if self._fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write_bytes(path: Path, data: bytes, **options) -> None:
    """``options``: :class:`atomic_output`'s keywords."""
    with atomic_output(path, **options) as f:
        f.write(data)


def atomic_write_json(path: Path, obj, **options) -> None:
    """``obj`` as indented JSON, its folder created (``options``: :class:`atomic_output`'s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode(), **options)


# --- append-only log ------------------------------------------------------------------------


def iter_log(path: Path) -> Iterator[dict]:
    """Entries of an :class:`AppendLog`, streamed. A last line without its newline is an append
    cut short by a crash: ignored. Any other line that is not JSON is damage: one line naming it."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                raise InputError(
                    f"{path}:{number}: corrupt log line (not JSON); delete the log to redo its work"
                ) from None


class AppendLog:
    """An append-only JSON Lines file; each :meth:`append` is one write and one fsync.

    Opening it removes a last line cut short by a crash (no newline), which :func:`iter_log`
    ignores too, so that the next append starts on a line of its own. One process appends to a
    log at a time (its owner: a generation part, a tar writer prefix).
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab")
        size = self._file.seek(0, os.SEEK_END)
        if size:
            with open(path, "rb") as f:  # find the last newline from the end, a block at a time
                end = size
                while end > 0:
                    start = max(0, end - 65536)
                    f.seek(start)
                    newline = f.read(end - start).rfind(b"\n")
                    if newline >= 0:
                        end = start + newline + 1
                        break
                    end = start
            if end < size:
                self._file.truncate(end)

    def append(self, entries: Iterable[dict]) -> None:
        """Appends ``entries`` with one write and one fsync (an fsync per entry stalls busy
        disks); a crash leaves the entries before the cut line whole."""
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        if text:
            self._file.write(text.encode())
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


# --- lock, cache and derived files ------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (a file or a folder, opened read-only), held in the block:
    processes building the same derived file take turns, so that it is built once. ``on_wait()``
    is called when another process holds it (to say why this one waits)."""
    if fcntl is None:  # no flock (Windows): builders may overlap, each still writing atomically
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def cache_dir() -> Path:
    """Folder for files derived from sources in read-only folders (indexes, shard summaries) and
    the evaluation's feature cache: ``$XDG_CACHE_HOME/solo-stablerep``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "solo-stablerep"


def derived_file_paths(source: Path, suffix: str) -> list[Path]:
    """Where a file derived from ``source`` (an index, a summary) is looked for and written, in that
    order: beside it (``<source><suffix>``), then in :func:`cache_dir` under a name unique to it."""
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:20]
    return [source.with_name(source.name + suffix), cache_dir() / f"{source.name}.{key}{suffix}"]


def write_first_writable(paths: Sequence[Path], write: Callable[[Path], None]) -> Path:
    """Calls ``write(path)`` (an atomic write) on each of ``paths`` in turn until one succeeds;
    returns it. A read-only data folder falls through to the cache. Raises the last ``OSError`` if
    none does."""
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            return path
        except OSError as error:
            last_error = error
    raise last_error


# --- identities -----------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB blocks (about 1 s per GB): a file rewritten in
    place, even with the same size and time, is another file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def json_digest(obj, chars: int = 16) -> str:
    """The first ``chars`` hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:chars]


# --- reading large sources ------------------------------------------------------------------


class Progress:
    """A line on stderr every few seconds while a large source is read:
    ``<doing> <source>: <done>/<total> <unit>, <seconds> s``."""

    def __init__(
        self,
        source: Path,
        total: int | None,
        every: float = 5.0,
        doing: str = "indexing",
        unit: str = "captions",
    ):
        self.source, self.total, self.every = source, total, every
        self.doing, self.unit = doing, unit
        self.started = self.shown = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.shown >= self.every:
            self.shown = now
            of = f"/{self.total}" if self.total is not None else ""
            print(
                f"{self.doing} {self.source}: {done}{of} {self.unit}, {now - self.started:.0f} s",
                file=sys.stderr,
                flush=True,
            )


@contextmanager
def unlimited_csv_fields() -> Iterator[None]:
    """Lifts the csv module's 128 KiB field limit in the block: a long caption is no quoting
    error."""
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)
