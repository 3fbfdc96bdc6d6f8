"""The feature cache: entries written atomically and read back memory-mapped; truncated, foreign and
other-version entries rebuilt, never trusted; an interrupted write leaves no valid entry."""

import json

import numpy as np
import pytest

from solo_stablerep.eval.cache import FeatureCache, cache_key

IDENTITY = {"model": {"random": "resnet18"}, "dataset": {"name": "digits"}, "split": "train"}


def write_entry(cache, key, features, labels):
    rows = cache.create(key, *features.shape)
    for start in range(0, len(features), 3):  # batch by batch, in place
        rows[start : start + 3] = features[start : start + 3]
    rows.flush()
    cache.commit(key, IDENTITY, labels)


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


def test_pending_features_are_no_entry_until_committed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key(IDENTITY)
    rows = cache.create(key, 10, 4)
    rows[:3] = 1.0
    rows.flush()
    assert cache.load(key) is None  # allocated, partly written: not an entry
    cache.discard(key)
    assert list(tmp_path.iterdir()) == []
    write_entry(cache, key, np.ones((10, 4), np.float32), np.zeros(10, int))
    cache.create(key, 10, 4)  # extracted again (zeros): the new rows replace the old
    cache.commit(key, IDENTITY, np.zeros(10, int))
    np.testing.assert_array_equal(cache.load(key)[0], np.zeros((10, 4)))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-20])


def _edit_meta(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
