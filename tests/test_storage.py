"""The storage helpers: crash tests of the append-only log and the atomic writer (a file cut at
every byte of its last record, or a writer killed mid-write, then resumed twice), the lock, the
derived paths."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from solo_stablerep.errors import InputError
from solo_stablerep.storage import (
    AppendLog,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    derived_file_paths,
    file_sha256,
    iter_log,
    json_digest,
    remove_stale_temps,
)

ENTRIES = [{"index": i, "caption": f"caption {i}", "images": ["é" * i]} for i in range(4)]


def written_log(path, batches):
    with AppendLog(path) as log:
        for batch in batches:
            log.append(batch)
    return path.read_bytes()


def test_append_log_survives_a_cut_at_every_byte_of_its_last_record(tmp_path):
    """A crash can cut the last append anywhere: readers see the entries before it, and a resumed
    writer appends the missing ones after them (nothing lost, nothing twice, no refusal), and a
    second resume after that appends as usual."""
    path = tmp_path / "log.jsonl"
    full = written_log(path, [ENTRIES[:2], ENTRIES[2:3]])
    last_start = full.rindex(b"\n", 0, len(full) - 1) + 1
    for cut in range(last_start, len(full) + 1):
        path.write_bytes(full[:cut])
        kept = list(iter_log(path))
        assert kept == ENTRIES[: 3 if cut == len(full) else 2], cut
        with AppendLog(path) as log:  # resume: redo what the log does not hold
            log.append(ENTRIES[len(kept) : 3])
        assert list(iter_log(path)) == ENTRIES[:3], cut
        with AppendLog(path) as log:  # a second resume
            log.append(ENTRIES[3:])
        assert list(iter_log(path)) == ENTRIES, cut
        assert path.read_bytes().endswith(b"\n")


def test_append_log_repairs_a_torn_batch_and_a_tail_without_any_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    full = written_log(path, [ENTRIES])  # one append of 4 lines: a cut keeps its whole lines
    cut = full.index(b"\n", full.index(b"\n") + 1) + 5
    path.write_bytes(full[:cut])
    assert list(iter_log(path)) == ENTRIES[:2]
    path.write_bytes(full[:7])  # a first line cut short: nothing to keep
    assert list(iter_log(path)) == []
    with AppendLog(path) as log:
        log.append(ENTRIES[:1])
    assert list(iter_log(path)) == ENTRIES[:1]
    path.write_bytes(b"x" * 200_000)  # longer than a block, no newline at all
    with AppendLog(path) as log:
        log.append(ENTRIES[:1])
    assert list(iter_log(path)) == ENTRIES[:1]


def test_a_damaged_complete_line_is_one_line_naming_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(InputError, match=r"log.jsonl:2: corrupt log line \(not JSON\)"):
        list(iter_log(path))


CHILD = """
import os, signal, sys
from pathlib import Path
from solo_stablerep.storage import AppendLog, atomic_output

path, what = Path(sys.argv[1]), sys.argv[2]
if what == "log":
    log = AppendLog(path)
    log.append([{"index": 1}])
    log._file.write(b'{"index": 2, "cap')  # the kill comes between write and fsync
    log._file.flush()
else:
    with atomic_output(path, "w", sole_writer=what == "sole") as f:
        f.write("new content, half")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer(path, what):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path), what], env=env, timeout=120
    )
    assert done.returncode == -signal.SIGKILL


def test_append_log_resumes_after_its_writer_is_killed(tmp_path):
    path = tmp_path / "log.jsonl"
    written_log(path, [[{"index": 0}]])
    killed_writer(path, "log")
    assert [e["index"] for e in iter_log(path)] == [0, 1]
    with AppendLog(path) as log:
        log.append([{"index": 2}])
    with AppendLog(path) as log:
        log.append([{"index": 3}])
    assert [e["index"] for e in iter_log(path)] == [0, 1, 2, 3]


@pytest.mark.parametrize("sole_writer", [False, True])
def test_atomic_output_killed_mid_write_leaves_the_old_file_and_a_cleanable_temporary(
    tmp_path, sole_writer
):
    path = tmp_path / "data.json"
    path.write_text("old content")
    killed_writer(path, "sole" if sole_writer else "unique")
    assert path.read_text() == "old content"
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".data.json.")
    if not sole_writer:  # a sole writer's next write reuses (overwrites) its temporary
        remove_stale_temps(path)  # what the writers do under their lock
    atomic_write_bytes(path, b"new", sole_writer=sole_writer)
    atomic_write_bytes(path, b"newer", sole_writer=sole_writer)  # and a second write after that
    assert path.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_atomic_output_error_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_json(path, {"first": 1})
    assert json.loads(path.read_text()) == {"first": 1}
    atomic_write_bytes(path, b"first")
    with pytest.raises(RuntimeError), atomic_output(path) as f:
        f.write(b"second, never finished")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["out.bin"]


def test_atomic_output_honours_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a", b"x")
        atomic_write_bytes(tmp_path / "b", b"x", sole_writer=True)
    finally:
        os.umask(previous)
    for name in ("a", "b"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_remove_stale_temps_leaves_other_files(tmp_path):
    path = tmp_path / "manifest.jsonl"
    stale = [".manifest.jsonl.0123456789ab.tmp", ".manifest.jsonl.tmp"]
    kept = [".manifest.jsonl.index.0123456789ab.tmp", "manifest.jsonl", ".other.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    remove_stale_temps(path)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_derived_file_paths_and_identities(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "data" / "manifest.jsonl"
    beside, cached = derived_file_paths(source, ".index")
    assert beside == source.with_name("manifest.jsonl.index")
    assert cached.parent == tmp_path / "cache" / "solo-stablerep"
    assert cached.name.startswith("manifest.jsonl.") and cached.name.endswith(".index")
    source.parent.mkdir()
    source.write_bytes(b"x" * (3 << 20))
    assert file_sha256(source) == file_sha256(source) and len(file_sha256(source)) == 64
    assert json_digest({"a": 1, "b": 2}) == json_digest({"b": 2, "a": 1})
    assert len(json_digest({"a": 1})) == 16
