"""Reading shard samples through their index lines (the DALI loader's way): the same members as the
webdataset package's tar stream, only the members asked for, and a tar cut short after it was
opened named in one line."""

import pytest
from helpers import make_manifest_dataset

from data_gen.convert import convert
from solo_stablerep.data.shards import (
    ShardFormatError,
    iter_indexed_samples,
    read_tar_index,
    tar_index_path,
)


@pytest.fixture
def shard_folder(tmp_path):
    make_manifest_dataset(tmp_path / "ds", 6, 3, class_names=["a", "b"])
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=12000, progress=False)
    return tmp_path / "shards"


def test_same_members_as_the_webdataset_stream(shard_folder):
    wds = pytest.importorskip("webdataset")
    tars = sorted(shard_folder.glob("*.tar"))
    assert len(tars) > 1
    for tar in tars:
        with open(tar, "rb") as f:
            files = (
                {**member, "__url__": str(tar)} for member in wds.tariterators.tar_file_iterator(f)
            )
            streamed = list(wds.tariterators.group_by_keys(files))
        indexed = list(iter_indexed_samples(tar))
        assert [s["__key__"] for s in indexed] == [s["__key__"] for s in streamed]
        for by_index, by_stream in zip(indexed, streamed, strict=True):
            components = sorted(k for k in by_stream if not k.startswith("__"))
            assert sorted(k for k in by_index if not k.startswith("__")) == components
            assert all(by_index[c] == by_stream[c] for c in components)
            assert by_index["__url__"] == str(tar)


def test_unknown_component_and_member_past_the_end(shard_folder):
    tar = sorted(shard_folder.glob("*.tar"))[0]
    samples = list(iter_indexed_samples(tar))  # mapped at full length
    with pytest.raises(KeyError):
        samples[0]["07.png"]
    last = samples[-1]
    end = max(offset + size for _, offset, size, _ in read_tar_index(tar_index_path(tar))[-1])
    with open(tar, "r+b") as f:
        f.truncate(end - 1)  # cuts the last byte of the last sample's last member
    fresh_last = list(iter_indexed_samples(tar))[-1]
    with pytest.raises(
        ShardFormatError,
        match=rf"{tar.name}: sample {last['__key__']}: member .* past the tar's end",
    ):
        [fresh_last[c] for c in fresh_last]


def test_dali_loader_names_a_tar_cut_short_while_training(tmp_path, shard_folder):
    pytest.importorskip("solo", reason="the loaders build on solo-learn's augmentations")
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    from test_webdataset_loader import cfg_for

    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.errors import ShardDataError

    def cut_every_tar():  # after the set was opened and checked, as a failing disk would
        for tar in shard_folder.glob("*.tar"):
            with open(tar, "r+b") as f:
                f.truncate(1024)

    data = prepare_synthetic_train_data(cfg_for(tmp_path, shard_folder, "data.format=dali"))
    cut_every_tar()
    with pytest.raises(ShardDataError, match=r"shard-\d+.tar: sample cap\d+: .*past the tar's end"):
        data.build_loader()  # DALI prefetches its first batches when the loader is built
