"""Training loaders on WebDataset shards (data.synthetic.layout=webdataset): item format, n of m
images per visit, epoch length, DALI CPU pipeline, and every bad input as a one-line error."""

import io
import shutil
import tarfile

import pytest

pytest.importorskip("solo", reason="the loaders build on solo-learn's augmentations")

from helpers import (  # noqa: E402
    SYNTHETIC_CPU_OVERRIDES,
    compose_parsed_cfg,
    copy_configs,
    make_manifest_dataset,
    nearest_colour,
    view_colour,
)

from data_gen.convert import convert  # noqa: E402
from data_gen.shards import ShardWriter  # noqa: E402
from solo_stablerep.data.shards import make_header  # noqa: E402

NUM_CAPTIONS, IMAGES, N_IMG = 10, 4, 3


@pytest.fixture
def shards(tmp_path):
    colours = make_manifest_dataset(tmp_path / "ds", NUM_CAPTIONS, IMAGES, class_names=["a", "b"])
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=12000, progress=False)
    return tmp_path / "shards", colours


def cfg_for(tmp_path, train_path, *extra):
    config_dir = tmp_path / "cfg"
    if not config_dir.exists():
        copy_configs(config_dir)
    return compose_parsed_cfg(
        config_dir,
        "stablerep.yaml",
        [
            f"data.train_path={train_path}",
            "data.synthetic.layout=webdataset",
            *SYNTHETIC_CPU_OVERRIDES,
            f"data.synthetic.n_img={N_IMG}",
            "data.synthetic.shuffle_buffer=4",
            *extra,
        ],
    )


def check_batches(loader, colours, epochs=2):
    """Every row's views are N_IMG distinct images of its own caption; returns captions per
    epoch."""
    seen = []
    for _ in range(epochs):
        captions, batches = [], 0
        for indexes, views, targets in loader:
            batches += 1
            assert len(views) == N_IMG and all(v.shape[0] == 4 for v in views)
            for row, i in enumerate(indexes.tolist()):
                own = colours[f"cap{i:04d}"]
                images = [nearest_colour(view_colour(v[row]), own) for v in views]
                assert len(set(images)) == N_IMG
                assert targets[row].item() == i % 2
                captions.append((i, tuple(images)))
        assert batches == len(loader) == NUM_CAPTIONS // 4
        seen.append(captions)
    return seen


def test_pytorch_loader_items_and_fresh_images(tmp_path, shards):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    folder, colours = shards
    # a buffer of 1 sample: no mixing across the passes over the tars, so an epoch's 8 items are
    # 8 distinct captions (with a larger buffer the next pass's samples mix in)
    cfg = cfg_for(tmp_path, folder, "data.synthetic.shuffle_buffer=1")
    assert cfg.data.num_classes == 2 and cfg.data.num_large_crops == N_IMG
    loader = prepare_synthetic_train_data(cfg)
    seen = check_batches(loader, colours)
    assert len({i for i, _ in seen[0]}) == 8
    assert seen[0] != seen[1]  # another tar order and other images in the next epoch
    assert check_batches(prepare_synthetic_train_data(cfg_for(tmp_path, folder)), colours, epochs=1)


def test_dali_cpu_loader(tmp_path, shards):
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    folder, colours = shards
    cfg = cfg_for(tmp_path, folder, "data.format=dali")
    loader = prepare_synthetic_train_data(cfg).build_loader()
    seen = check_batches(loader, colours)
    assert seen[0] != seen[1]


def test_brace_pattern(tmp_path, shards):
    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardDataError

    folder, _ = shards
    count = len(list(folder.glob("*.tar")))
    assert len(ShardReader(f"{folder}/shard-{{000000..{count - 1:06d}}}.tar")) == NUM_CAPTIONS
    assert len(ShardReader(f"{folder}/shard-{{000000..000001}}.tar")) < NUM_CAPTIONS
    with pytest.raises(ShardDataError, match="the pattern matches no shard file"):
        ShardReader(f"{folder}/other-{{000000..000003}}.tar")
    with pytest.raises(ShardDataError, match="shard-000999.tar: shard named by .* not found"):
        ShardReader(f"{folder}/shard-{{000000,000999}}.tar")


def test_truncated_tar(tmp_path, shards):
    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardDataError

    folder, _ = shards
    tar = folder / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    with pytest.raises(ShardDataError, match=r"shard-000001.tar: truncated \(3000 bytes"):
        ShardReader(str(folder))


@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
def test_corrupt_sample_metadata_error_or_opt_in_skip(tmp_path, shards, data_format):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.data.shards import read_tar_index
    from solo_stablerep.errors import ShardDataError

    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    folder, _ = shards
    tar = folder / "shard-000000.tar"
    _, offset, size, name = read_tar_index(tar.with_suffix(".idx"))[1][
        0
    ]  # the second sample's JSON
    data = bytearray(tar.read_bytes())
    data[offset : offset + size] = b"\xff" * size  # garbled on disk after the set was written
    tar.write_bytes(bytes(data))
    cfg = [f"data.format={data_format}", "data.num_workers=0"]
    loader = prepare_synthetic_train_data(cfg_for(tmp_path, folder, *cfg))
    with pytest.raises(
        ShardDataError,
        match=rf"shard-000000.tar: sample {name[:-5]}: its .json metadata is not valid",
    ):
        loader = loader.build_loader() if data_format == "dali" else loader  # DALI prefetches
        for _ in range(4):  # an epoch reads 8 of the 10 samples
            for _ in loader:
                pass
    data = prepare_synthetic_train_data(
        cfg_for(tmp_path, folder, *cfg, "data.synthetic.skip_corrupt=True")
    )
    loader = data.build_loader() if data_format == "dali" else data
    for _ in range(4):  # the other samples fill each epoch
        assert sum(1 for _ in loader) == len(loader)
    assert (data.skipped if data_format == "dali" else data.dataset.skipped).value >= 1


def test_corrupt_image_names_shard_and_sample(tmp_path):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.errors import ShardDataError

    make_manifest_dataset(tmp_path / "ds", 4, IMAGES)
    victim = sorted((tmp_path / "ds" / "images").rglob("cap0002_*.png"))
    for path in victim:
        path.write_bytes(b"not a png" * 10)
    convert(tmp_path / "ds", tmp_path / "shards", progress=False)
    loader = prepare_synthetic_train_data(cfg_for(tmp_path, tmp_path / "shards"))
    with pytest.raises(
        ShardDataError, match=r"shard-000000.tar: sample cap0002: image \d+.png: corrupt image"
    ):
        for _ in loader:
            pass


def write_tar_by_hand(folder, members, run_id="run-x"):
    """A shard whose samples hold the given members (name -> bytes), with its DALI index."""
    import json

    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool builds the index")
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted({name.split(".")[0] for name in members})
    (folder / "webdataset.json").write_text(
        json.dumps(make_header(run_id, len(keys), IMAGES, "png", None, None))
    )
    with tarfile.open(folder / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with wds2idx.IndexCreator(
        str(folder / "shard-000000.tar"), str(folder / "shard-000000.idx"), verbose=False
    ) as creator:
        creator.create_index()


def test_sample_missing_an_image(tmp_path):
    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardDataError

    meta = (
        b'{"caption_id": "c1", "caption": "x", "label": null, "index": 0, "run_id": "run-x", '
        b'"num_images": 3}'
    )
    write_tar_by_hand(tmp_path, {"c1.json": meta, "c1.00.png": b"a", "c1.02.png": b"c"})
    with pytest.raises(
        ShardDataError, match=r"shard-000000.tar: sample c1 lacks some of its images"
    ):
        ShardReader(str(tmp_path))


def test_sample_with_fewer_than_n_images(tmp_path):
    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardDataError

    with ShardWriter(tmp_path, make_header("run-a", 2, 4, "png", None, None)) as writer:
        writer.write(0, "full", "c", None, [b"x"] * 4)
        writer.write(1, "short", "c", None, [b"x"] * 2)
    with pytest.raises(
        ShardDataError,
        match=r"shard-000000.tar: sample short has 2 images, fewer than data.synthetic.n_img=3",
    ):
        ShardReader(str(tmp_path)).check(3)


def test_shards_of_two_runs_mixed(tmp_path):
    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardDataError

    for run in ("a", "b"):
        with ShardWriter(
            tmp_path / run, make_header(f"run-{run}", 1, 2, "png", None, None), prefix=run
        ) as writer:
            writer.write(0, f"cap{run}", "c", None, [b"x"] * 2)
    for suffix in (".tar", ".idx"):
        shutil.copy(tmp_path / "b" / f"b-000000{suffix}", tmp_path / "a")
    with pytest.raises(
        ShardDataError, match=r"b-000000.tar: sample capb is from generation run run-b, .*mixed"
    ):
        ShardReader(f"{tmp_path / 'a'}/{{a,b}}-000000.tar")
    with pytest.raises(ShardDataError, match=r"b-000000.tar: sample capb .*two runs are mixed"):
        ShardReader(str(tmp_path / "a"))


@pytest.mark.parametrize(
    "header, match",
    [
        ("[1, 2]", r"webdataset.json: a JSON list, not the header's object"),
        ('"text"', r"webdataset.json: a JSON str, not the header's object"),
        ("drop run_id", r"webdataset.json: header lacks \['run_id'\]"),
    ],
)
def test_a_header_that_is_not_the_header_object_is_one_line(tmp_path, shards, header, match):
    import json

    from solo_stablerep.data.readers import ShardReader
    from solo_stablerep.errors import ShardFormatError

    folder, _ = shards
    path = folder / "webdataset.json"
    if header == "drop run_id":
        header = json.loads(path.read_text())
        del header["run_id"]
        header = json.dumps(header)
    path.write_text(header)
    with pytest.raises(ShardFormatError, match=match) as raised:
        ShardReader(str(folder))
    assert "\n" not in str(raised.value)


def test_dali_loader_names_a_corrupt_image_or_skips_it_when_asked(tmp_path):
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.errors import ShardDataError

    make_manifest_dataset(tmp_path / "ds", 8, IMAGES)
    for path in sorted((tmp_path / "ds" / "images").rglob("cap0002_*.png")):
        path.write_bytes(b"not a png" * 10)
    convert(tmp_path / "ds", tmp_path / "shards", progress=False)
    data = prepare_synthetic_train_data(cfg_for(tmp_path, tmp_path / "shards", "data.format=dali"))
    with pytest.raises(
        ShardDataError, match=r"shard-000000.tar: sample cap0002: image \d+.png: corrupt image"
    ):
        for _ in data.build_loader():  # DALI prefetches its first batches when the loader is built
            pass
    data = prepare_synthetic_train_data(
        cfg_for(
            tmp_path, tmp_path / "shards", "data.format=dali", "data.synthetic.skip_corrupt=True"
        )
    )
    loader = data.build_loader()
    assert sum(1 for _ in loader) == len(loader) == 2  # the other captions fill the epoch
    assert data.skipped.value >= 1


@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
@pytest.mark.parametrize("damage", ["tar", "images"])
def test_nothing_readable_with_skip_corrupt_is_an_error_not_a_hang(tmp_path, data_format, damage):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.errors import ShardDataError

    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    make_manifest_dataset(tmp_path / "ds", 8, IMAGES)
    if damage == "images":  # every sample then has no readable image
        for path in (tmp_path / "ds" / "images").rglob("*.png"):
            path.write_bytes(b"not a png" * 10)
    convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=12000, progress=False)
    data = prepare_synthetic_train_data(
        cfg_for(
            tmp_path,
            tmp_path / "shards",
            f"data.format={data_format}",
            "data.synthetic.skip_corrupt=True",
            "data.num_workers=0",
        )
    )
    if damage == "tar":  # emptied after the set was opened and checked: no tar is readable
        for tar in (tmp_path / "shards").glob("*.tar"):
            tar.write_bytes(b"")
    with pytest.raises(
        ShardDataError, match=r"shard-\d+.tar: no usable sample in it or the \d+ other tars"
    ):
        for _ in data.build_loader() if data_format == "dali" else data:
            pass
