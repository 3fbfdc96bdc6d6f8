"""Caption index: contents equal the manifest's / CSV's, staleness, concurrency, memory, light
imports."""

import csv
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from solo_stablerep.data.index import CAPTION_INDEX_SUFFIX, CaptionIndex, write_indexed_manifest
from solo_stablerep.data.manifest import (
    MANIFEST_NAME,
    CaptionRecord,
    ManifestError,
    image_relpath,
    read_manifest,
    write_manifest,
)


def _records():
    """Rule paths (two extensions), custom paths, a short id, unicode captions."""
    return [
        CaptionRecord(
            "abcd01", "a cat on a mat", 0, [image_relpath("abcd01", k, "jpg") for k in range(3)]
        ),
        CaptionRecord(
            "ab",
            '日本語のキャプション, with "quotes"',
            1,
            [image_relpath("ab", k, "png") for k in range(2)],
        ),
        CaptionRecord(
            "x-9_z", "custom paths 😀", 2, ["elsewhere/one.webp", "two.jpg", "./deep/../three.png"]
        ),
        CaptionRecord(
            "mixed",
            "one rule path then a custom one",
            0,
            [image_relpath("mixed", 0, "jpg"), "b.jpg"],
        ),
        CaptionRecord("e", "", 1, [image_relpath("e", 5, "jpg")]),  # k=5 alone: not the rule's list
    ]


def _assert_index_equals(index: CaptionIndex, records, class_names):
    assert len(index) == len(records)
    assert index.class_names == class_names
    assert list(index.caption_ids) == [r.caption_id for r in records]
    assert list(index.captions) == [r.caption for r in records]
    assert index.labels.tolist() == [-1 if r.label is None else r.label for r in records]
    for i, r in enumerate(records):
        assert index.num_images(i) == len(r.images)
        assert [index.image_relpath(i, k) for k in range(len(r.images))] == r.images
        assert index.image_path(i, 0) == index.roots[0] / r.images[0]


@pytest.mark.parametrize("labelled", [True, False])
def test_index_equals_the_manifest(tmp_path, labelled):
    records = _records()
    if not labelled:
        records = [CaptionRecord(r.caption_id, r.caption, None, r.images) for r in records]
    names = ["cat", "dog", "eel"] if labelled else None
    write_manifest(tmp_path, records, class_names=names)
    _, read = read_manifest(tmp_path)
    index = CaptionIndex.from_manifest(tmp_path)
    _assert_index_equals(index, read, names)
    assert (tmp_path / (MANIFEST_NAME + CAPTION_INDEX_SUFFIX)).is_file()
    # reopened from the file; and the index written while merging equals the one built on open
    _assert_index_equals(CaptionIndex.from_manifest(tmp_path), read, names)
    write_indexed_manifest(tmp_path / "w", records, class_names=names, num_captions=len(records))
    assert (tmp_path / "w" / (MANIFEST_NAME + CAPTION_INDEX_SUFFIX)).read_bytes() != b""
    _assert_index_equals(CaptionIndex.from_manifest(tmp_path / "w"), read, names)


def test_pickles_as_a_path_and_maps_the_same_file(tmp_path):
    write_manifest(tmp_path, _records(), class_names=["a", "b", "c"])
    index = CaptionIndex.from_manifest(tmp_path)
    data = pickle.dumps(index)
    assert len(data) < 1000  # the path, not the arrays
    again = pickle.loads(data)
    _assert_index_equals(again, read_manifest(tmp_path)[1], ["a", "b", "c"])


def test_authors_csv_index(tmp_path):
    for r in range(2):
        (tmp_path / f"seed{r}").mkdir()
    rows = [("sub/0.png", 'a "quoted", caption\nover two lines'), ("sub/1.jpg", "plain")]
    with open(tmp_path / "c.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption"), *rows])
    roots = [tmp_path / "seed0", tmp_path / "seed1"]
    index = CaptionIndex.from_authors_csv(tmp_path / "c.csv", roots, header=True)
    assert list(index.caption_ids) == ["2", "3"] and list(index.captions) == [c for _, c in rows]
    assert index.labels.tolist() == [-1, -1] and index.class_names is None
    assert [index.image_path(1, k) for k in range(index.num_images(1))] == [
        r / "sub/1.jpg" for r in roots
    ]
    # the header flag is part of what the index describes: without it the header row is a caption
    with pytest.raises(ManifestError, match=r"c.csv:1: 'path' is not an image path"):
        CaptionIndex.from_authors_csv(tmp_path / "c.csv", roots, header=False)


def test_stale_truncated_or_foreign_index_is_rebuilt(tmp_path):
    records = [CaptionRecord(r.caption_id, r.caption, None, r.images) for r in _records()]
    write_manifest(tmp_path, records[:3])
    index_file = tmp_path / (MANIFEST_NAME + CAPTION_INDEX_SUFFIX)
    assert len(CaptionIndex.from_manifest(tmp_path)) == 3

    write_manifest(tmp_path, records)  # the manifest changed
    assert list(CaptionIndex.from_manifest(tmp_path).caption_ids) == [r.caption_id for r in records]

    good = index_file.read_bytes()
    for broken in (
        good[: len(good) - 7],
        good[:20],
        b"",
        b"not an index at all" * 10,
        good.replace(b'"version": 1', b'"version": 7', 1),
    ):
        index_file.write_bytes(broken)
        _assert_index_equals(CaptionIndex.from_manifest(tmp_path), read_manifest(tmp_path)[1], None)
        assert index_file.read_bytes() == good


def test_build_validates_every_line_with_the_readers_errors(tmp_path):
    header = {
        "format": "stablerep-synthetic",
        "version": 1,
        "num_captions": 2,
        "class_names": None,
        "generator": None,
    }
    row = {
        "caption_id": "abcd",
        "caption": "a cat",
        "label": None,
        "images": ["images/ab/cd/abcd_00.png"],
    }
    (tmp_path / MANIFEST_NAME).write_text(
        "\n".join(json.dumps(o) for o in (header, row, row)) + "\n"
    )
    with pytest.raises(ManifestError, match=r"manifest.jsonl:3: caption_id 'abcd' repeats line 2$"):
        CaptionIndex.from_manifest(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        MANIFEST_NAME
    ]  # no index of a bad manifest


def test_unwritable_data_folder_puts_the_index_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_manifest(tmp_path / "data", _records(), class_names=["a", "b", "c"])
    (
        tmp_path / "data" / (MANIFEST_NAME + CAPTION_INDEX_SUFFIX)
    ).mkdir()  # unwritable there, even as root
    index = CaptionIndex.from_manifest(tmp_path / "data")
    assert index.index_path.parent == tmp_path / "cache" / "solo-stablerep"
    assert len(CaptionIndex.from_manifest(tmp_path / "data")) == len(_records())


def test_concurrent_first_opens_build_one_valid_index(tmp_path):
    records = [
        CaptionRecord(f"c{i:06d}", f"caption {i}", None, [image_relpath(f"c{i:06d}", 0, "jpg")])
        for i in range(20000)
    ]
    write_manifest(tmp_path, records)
    script = textwrap.dedent(f"""
        import sys, time
        from solo_stablerep.data.index import CaptionIndex
        time.sleep(max(0.0, {__import__("time").time() + 3} - time.time()))  # start together
        index = CaptionIndex.from_manifest(sys.argv[1])
        print(len(index), index.caption_ids[19999], index.index_path)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for (out, err), p in zip(outputs, procs, strict=True):
        assert p.returncode == 0, err
        assert out.split()[:2] == ["20000", "c019999"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        MANIFEST_NAME,
        MANIFEST_NAME + CAPTION_INDEX_SUFFIX,
    ]


MEMORY_SCRIPT = """
import gc, sys
from solo_stablerep.data.index import CaptionIndex

def private_dirty_and_rss():
    rollup = open("/proc/self/smaps_rollup").read().splitlines()[1:]
    fields = dict(line.split(":", 1) for line in rollup)
    return tuple(1024 * int(fields[key].split()[0]) for key in ("Private_Dirty", "Rss"))

CaptionIndex.from_manifest(sys.argv[1])  # builds the index (first open)
gc.collect()
before = private_dirty_and_rss()
index = CaptionIndex.from_manifest(sys.argv[1])
for i in range(len(index)):  # touch every caption: id, text, label, paths
    index.captions[i]; index.labels[i]; index.image_path(i, 1)
gc.collect()
after = private_dirty_and_rss()
print(len(index), after[0] - before[0], after[1] - before[1])
"""


def test_index_memory_per_caption_is_bounded(tmp_path):
    n = 100_000
    with open(tmp_path / MANIFEST_NAME, "w") as f:
        f.write(
            json.dumps(
                {
                    "format": "stablerep-synthetic",
                    "version": 1,
                    "num_captions": n,
                    "class_names": None,
                    "generator": None,
                }
            )
            + "\n"
        )
        for i in range(n):
            cid = f"{i:08x}"
            f.write(
                json.dumps(
                    {
                        "caption_id": cid,
                        "caption": f"a photo of thing number {i}",
                        "label": None,
                        "images": [image_relpath(cid, k, "jpg") for k in range(10)],
                    }
                )
                + "\n"
            )
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    count, private_growth, rss_growth = map(int, result.stdout.split())
    assert count == n
    # no Python object per caption: private memory does not grow with the captions touched, and the
    # resident (shared, file-backed) pages are the index's own compact bytes
    assert private_growth / n < 16, f"{private_growth / n:.1f} B private per caption"
    assert rss_growth / n < 96, f"{rss_growth / n:.1f} B resident per caption"


def test_data_gen_cli_imports_neither_solo_nor_lightning():
    script = "import sys, data_gen.cli; print(sorted({'solo', 'lightning'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_rule_paths_of_more_extensions_than_codes_are_stored(tmp_path):
    records = [
        CaptionRecord(f"c{i:04d}", f"c{i}", None, [image_relpath(f"c{i:04d}", 0, f"e{i}")])
        for i in range(300)
    ]
    write_manifest(tmp_path, records)
    _assert_index_equals(CaptionIndex.from_manifest(tmp_path), records, None)
    write_indexed_manifest(tmp_path / "w", records)
    _assert_index_equals(CaptionIndex.from_manifest(tmp_path / "w"), records, None)
