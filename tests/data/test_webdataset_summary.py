"""Shard summary: a shard set opened again reads no index file, and a tar added, changed or
truncated since is checked (and named) again; read-only folders keep it in the cache."""

import json
import threading

import pytest

pytest.importorskip("solo", reason="the shard loaders build on solo-learn's augmentations")

from data_gen.shards import ShardWriter  # noqa: E402
from solo_stablerep.data import shards as shard_format  # noqa: E402
from solo_stablerep.data.readers import ShardReader  # noqa: E402
from solo_stablerep.data.shards import HEADER_NAME, SUMMARY_SUFFIX, make_header  # noqa: E402
from solo_stablerep.errors import ShardDataError  # noqa: E402

NUM_CAPTIONS, IMAGES = 6, 4


@pytest.fixture
def folder(tmp_path):
    """3 tars of 2 captions; caption 3 has 2 images, the others 4."""
    out = tmp_path / "shards"
    with ShardWriter(
        out, make_header("run-a", NUM_CAPTIONS, IMAGES, "png", None, None), max_bytes=8000
    ) as writer:
        for i in range(NUM_CAPTIONS):
            images = [bytes([i, k]) * 50 for k in range(2 if i == 3 else IMAGES)]
            writer.write(i, f"cap{i}", f"caption {i}", None, images)
    assert len(list(out.glob("*.tar"))) == 3
    return out


def no_index_reading(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} read although its summary is cached")

    monkeypatch.setattr(shard_format, "tar_index_lines", fail)


def count_summarised(monkeypatch) -> list:
    """Names of the tars summarised from here on, in order."""
    summarised, summarise = [], shard_format.summarise_tar

    def counting(tar, image_ext):
        summarised.append(tar.name)
        return summarise(tar, image_ext)

    monkeypatch.setattr(shard_format, "summarise_tar", counting)
    return summarised


def test_second_open_reads_no_index(folder, monkeypatch):
    first = ShardReader(str(folder))
    summary = json.loads((folder / (HEADER_NAME + SUMMARY_SUFFIX)).read_text())
    assert sorted(summary["tars"]) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    no_index_reading(monkeypatch)
    again = ShardReader(str(folder))
    assert len(again) == NUM_CAPTIONS and again.sample_counts == first.sample_counts == [2, 2, 2]
    assert again.fewest_images == (2, folder / "shard-000001.tar", "cap3")
    with pytest.raises(
        ShardDataError, match=r"shard-000001.tar: sample cap3 has 2 images, fewer than .*n_img=3"
    ):
        again.check(3)


def test_tar_changed_after_caching_is_checked_again(folder, monkeypatch):
    ShardReader(str(folder))
    tar = folder / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    summarised = count_summarised(monkeypatch)
    with pytest.raises(
        ShardDataError, match=r"shard-000001.tar: truncated \(3000 bytes, its tar index reaches"
    ):
        ShardReader(str(folder))
    assert summarised == ["shard-000001.tar"]
    (folder / "shard-000001.idx").unlink()
    with pytest.raises(ShardDataError, match=r"shard-000001.idx: tar index missing"):
        ShardReader(str(folder))


def test_tars_checked_before_a_bad_one_are_kept(folder, monkeypatch):
    tar = folder / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    with pytest.raises(ShardDataError, match=r"shard-000001.tar: truncated"):
        ShardReader(str(folder))
    summary = json.loads((folder / (HEADER_NAME + SUMMARY_SUFFIX)).read_text())
    assert list(summary["tars"]) == ["shard-000000.tar"]


def test_mixed_runs_reported_from_the_cache_too(tmp_path, monkeypatch):
    for run in ("a", "b"):
        with ShardWriter(
            tmp_path / run, make_header(f"run-{run}", 1, 2, "png", None, None), prefix=run
        ) as writer:
            writer.write(0, f"cap{run}", "c", None, [b"x"] * 2)
    for suffix in (".tar", ".idx"):
        (tmp_path / "a" / f"b-000000{suffix}").write_bytes(
            (tmp_path / "b" / f"b-000000{suffix}").read_bytes()
        )
    pattern = f"{tmp_path / 'a'}/{{a,b}}-000000.tar"
    for _ in range(2):
        with pytest.raises(
            ShardDataError, match=r"b-000000.tar: sample capb is from generation run run-b, .*mixed"
        ):
            ShardReader(pattern)
        no_index_reading(monkeypatch)


def test_added_tar_is_summarised_alone(folder, monkeypatch):
    assert len(ShardReader(f"{folder}/shard-{{000000..000001}}.tar")) == 4
    summarised = count_summarised(monkeypatch)
    assert len(ShardReader(str(folder))) == NUM_CAPTIONS
    assert summarised == ["shard-000002.tar"]
    assert len(ShardReader(f"{folder}/shard-{{000001..000002}}.tar")) == 4  # a subset: all cached
    assert summarised == ["shard-000002.tar"]


def test_read_only_folder_keeps_the_summary_in_the_cache(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (folder / (HEADER_NAME + SUMMARY_SUFFIX)).mkdir()  # unwritable there, even as root
    ShardReader(str(folder))
    cached = list((tmp_path / "cache" / "solo-stablerep").glob(f"{HEADER_NAME}.*{SUMMARY_SUFFIX}"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())["tars"]) == 3
    no_index_reading(monkeypatch)
    assert len(ShardReader(str(folder))) == NUM_CAPTIONS


def test_concurrent_first_opens_summarise_each_tar_once(folder, monkeypatch):
    summarised = count_summarised(monkeypatch)
    start, lengths = threading.Barrier(4), []

    def open_set():
        start.wait()
        lengths.append(len(ShardReader(str(folder))))

    threads = [threading.Thread(target=open_set) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert lengths == [NUM_CAPTIONS] * 4
    assert sorted(summarised) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
