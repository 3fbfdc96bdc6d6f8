"""The feature cache: entries written atomically and read back memory-mapped; truncated, foreign and
other-version entries rebuilt, never trusted; an interrupted write leaves no valid entry."""

import json

import numpy as np
import pytest

from solo_stablerep.eval.cache import FeatureCache, cache_key

IDENTITY = {"model": {"random": "resnet18"}, "dataset": {"name": "digits"}, "split": "train"}


def write_entry(cache, key, features, labels):
    with cache.writer(key, IDENTITY, len(features)) as entry:
        entry.labels = labels
        for start in range(0, len(features), 3):  # batch by batch
            entry.write(features[start : start + 3])


def test_entry_round_trip_is_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key(IDENTITY)
    features = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    labels = np.arange(10) % 3
    assert cache.load(key) is None and cache.misses == 1
    write_entry(cache, key, features, labels)
    read_features, read_labels = cache.load(key)
    assert cache.hits == 1
    assert isinstance(read_features, np.memmap)
    np.testing.assert_array_equal(read_features, features)
    np.testing.assert_array_equal(read_labels, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{key}.features.npy", f"{key}.labels.npy", f"{key}.json"]
    )  # no temporary files left


def test_keys_differ_with_every_part_of_the_identity():
    keys = {
        cache_key(IDENTITY),
        cache_key({**IDENTITY, "split": "test"}),
        cache_key({**IDENTITY, "model": {"random": "resnet50"}}),
        cache_key({**IDENTITY, "transform": {"size": 32}}),
    }
    assert len(keys) == 4


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda key, root: _truncate(root / f"{key}.features.npy"), id="truncated-features"
        ),
        pytest.param(
            lambda key, root: (root / f"{key}.labels.npy").write_bytes(b"\x93NUMPY junk"),
            id="foreign-labels",
        ),
        pytest.param(
            lambda key, root: _edit_meta(root / f"{key}.json", version=0), id="other-version"
        ),
        pytest.param(
            lambda key, root: _edit_meta(root / f"{key}.json", key="another"), id="another-entry"
        ),
        pytest.param(
            lambda key, root: _edit_meta(root / f"{key}.json", shape=[10, 5]), id="other-shape"
        ),
        pytest.param(lambda key, root: (root / f"{key}.json").write_text("{"), id="broken-json"),
    ],
)
def test_damaged_entries_are_rebuilt(tmp_path, damage, caplog):
    cache = FeatureCache(tmp_path)
    key = cache_key(IDENTITY)
    features = np.ones((10, 4), np.float32)
    write_entry(cache, key, features, np.zeros(10, int))
    damage(key, tmp_path)
    assert cache.load(key) is None
    assert "rebuilding it" in caplog.text
    write_entry(cache, key, 2 * features, np.zeros(10, int))
    np.testing.assert_array_equal(cache.load(key)[0], 2 * features)


def test_interrupted_write_leaves_no_valid_entry(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key(IDENTITY)
    with pytest.raises(KeyboardInterrupt):
        with cache.writer(key, IDENTITY, 10) as entry:
            entry.labels = np.zeros(10, int)
            entry.write(np.ones((3, 4), np.float32))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="wrote 3 of 10 rows"):
        with cache.writer(key, IDENTITY, 10) as entry:
            entry.labels = np.zeros(10, int)
            entry.write(np.ones((3, 4), np.float32))
    assert cache.load(key) is None


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-20])


def _edit_meta(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
