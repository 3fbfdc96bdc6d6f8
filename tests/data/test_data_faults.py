"""Faults and bad input met when training from a synthetic data set, through the pretrain entry
point (the function Hydra calls, on the cfg the command line composes; a subprocess where the
command line itself matters): every case ends as one line naming the bad input and what to do, or
trains with the damaged sample skipped under ``data.synthetic.skip_corrupt`` (issue 21).
Neighbours of each case (the other layout, the other loader, damage met while training) are
checked on the loaders directly. Data: procedural 16 px JPEGs, 8 captions x 3 images."""

import contextlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="the entry point builds on solo-learn")

from helpers import (
    SYNTHETIC_CPU_OVERRIDES,
    compose_parsed_cfg,
    compose_raw_cfg,
    copy_configs,
    procedural_flags,
    run_pretrain_command,
)  # noqa: E402

from data_gen.cli import main as generate_main  # noqa: E402
from data_gen.convert import convert  # noqa: E402
from solo_stablerep.errors import InputError  # noqa: E402

NUM_CAPTIONS = 8
TINY_RUN = [
    "max_epochs=1",
    "+limit_train_batches=1",
    "+num_sanity_val_steps=0",
    "backbone.name=resnet18",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "data.synthetic.n_img=2",
    "wandb.enabled=False",
    "auto_resume.enabled=False",
    "checkpoint.enabled=False",
    *SYNTHETIC_CPU_OVERRIDES,
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A generated data set and its shards (2 samples a tar), copied by each test before damage."""
    root = tmp_path_factory.mktemp("pristine")
    (root / "captions.txt").write_text(
        "".join(f"a picture number {i}\n" for i in range(NUM_CAPTIONS))
    )
    assert (
        generate_main(
            [
                str(root / "captions.txt"),
                str(root / "ds"),
                *procedural_flags(images_per_caption=3),
            ]
        )
        == 0
    )
    convert(root / "ds", root / "shards", shard_bytes=6000, progress=False)
    assert len(list((root / "shards").glob("*.tar"))) == NUM_CAPTIONS // 2
    copy_configs(root / "cfg")
    return root


@pytest.fixture
def data(tmp_path, pristine):
    for name in ("ds", "shards", "cfg"):
        shutil.copytree(pristine / name, tmp_path / name)
    return tmp_path


def entry(data: Path, train_path, *overrides):
    """The entry point on ``data.train_path=train_path`` + ``overrides``: None when it trained, else
    its one-line error (what ``solo-stablerep-pretrain`` prints)."""
    from solo_stablerep import pretrain

    cfg = compose_raw_cfg(
        data / "cfg", "stablerep.yaml", [*TINY_RUN, f"data.train_path={train_path}", *overrides]
    )
    os.environ.pop("HYDRA_FULL_ERROR", None)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            pretrain.hydra_main.__wrapped__(cfg)
    except SystemExit as stop:
        assert stop.code == 2 and "Traceback" not in stderr.getvalue()
        message = stderr.getvalue().strip().splitlines()[-1]
        assert message.startswith("solo-stablerep-pretrain: error: ") and "\n" not in message, (
            message
        )
        return message
    return None


def sample_lines(idx: Path) -> list:
    return idx.read_bytes().split(b"\n")


def first_image(root: Path, caption: int = 1) -> Path:
    return sorted((root / "ds" / "images").rglob("*_00.jpg"))[caption]


def cut_short(path: Path) -> None:
    """A JPEG whose header is intact and whose body (the scan after its start marker) is cut short
    in the middle: DALI's decoder rejects it, PIL's header check passes it."""
    data = path.read_bytes()
    path.write_bytes(data[: (data.find(b"\xff\xda") + len(data)) // 2])


def scan_gone(path: Path) -> None:
    """A JPEG cut before its start-of-scan marker: header intact, no pixel data; PIL opens it and
    refuses to decode it, DALI's decoder decodes it without a word."""
    data = path.read_bytes()
    path.write_bytes(data[: data.find(b"\xff\xda")])


def damage_tar_member(tar: Path, line: int, member: int, new: bytes) -> None:
    """Overwrites member ``member`` of the sample on index line ``line`` (0 = the index's header)
    in place, padded with spaces to its size."""
    fields = sample_lines(tar.with_suffix(".idx"))[line].split()
    offset, size = int(fields[4 * member + 1]), int(fields[4 * member + 2])
    assert len(new) <= size
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(new.ljust(size, b" "))


def first_json(tar: Path, line: int = 1) -> bytes:
    fields = sample_lines(tar.with_suffix(".idx"))[line].split()
    with open(tar, "rb") as f:
        f.seek(int(fields[1]))
        return f.read(int(fields[2]))


# ---------------------------------------------------------- data.train_path and data.synthetic


@pytest.mark.slow
def test_readme_brace_pattern_runs_as_printed_and_unquoted_gets_a_hint(data):
    pattern = f"{data / 'shards'}/shard-{{000000..000003}}.tar"
    # the documented form '...data.train_path="SHARDS/shard-{000000..000099}.tar"', after the shell
    done = run_pretrain_command(
        ["solo-stablerep-pretrain"],
        data / "cfg",
        "stablerep.yaml",
        data,
        *TINY_RUN,
        "data.synthetic.layout=webdataset",
        f'data.train_path="{pattern}"',
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_pretrain_command(
        ["solo-stablerep-pretrain"],
        data / "cfg",
        "stablerep.yaml",
        data,
        *TINY_RUN,
        "data.synthetic.layout=webdataset",
        f"data.train_path={pattern}",
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"solo-stablerep-pretrain: error: data.train_path={pattern}: Hydra reads a brace as the "
        "start of a dict; "
        f"quote the value for Hydra, inside the shell's quotes: 'data.train_path=\"{pattern}\"'"
    ]


def test_a_single_tar_or_a_pattern_matching_nothing(data):
    tar = data / "shards" / "shard-000001.tar"
    assert entry(data, tar, "data.synthetic.layout=webdataset", "optimizer.batch_size=2") is None
    assert "the pattern matches no shard file" in entry(
        data, f'"{data}/shards/other-{{0..3}}.tar"', "data.synthetic.layout=webdataset"
    )
    assert "no such file or folder" in entry(
        data, data / "shards" / "nothing.tar", "data.synthetic.layout=webdataset"
    )


@pytest.mark.parametrize(
    "typo, expected",
    [
        ("+data.synthetic.skip_corupt=True", "unknown data.synthetic.skip_corupt; expected one of"),
        (
            "+data.synthetic.downsample.probability=0.1",
            "unknown data.synthetic.downsample.probability; expected",
        ),
    ],
)
def test_a_data_synthetic_typo_is_refused_like_a_method_kwargs_one(data, typo, expected):
    assert expected in entry(data, data / "ds", typo)


# ---------------------------------------------------------- images, samples, indexes damaged


@pytest.mark.parametrize(
    "damage, expected",
    [(cut_short, "JPEG data cut short"), (scan_gone, "JPEG without scan data")],
)
@pytest.mark.parametrize("layout", ["manifest", "webdataset"])
def test_dali_on_a_jpeg_cut_short_names_it_or_skips_it(data, layout, damage, expected):
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    damage(first_image(data))
    if layout == "webdataset":  # the same damage inside a tar
        shutil.rmtree(data / "shards")
        convert(data / "ds", data / "shards", shard_bytes=6000, progress=False)
    path = data / ("ds" if layout == "manifest" else "shards")
    # every caption in one batch of 8 (a shuffle buffer of 1: one pass over the tars), all 3 images
    # each: the damaged one is read, whatever the order
    args = [
        f"data.synthetic.layout={layout}",
        "data.format=dali",
        "optimizer.batch_size=8",
        "data.synthetic.n_img=3",
        "data.synthetic.shuffle_buffer=1",
    ]
    message = entry(data, path, *args)
    assert expected in message and "skip_corrupt=True" in message
    assert (
        (first_image(data).name in message)
        if layout == "manifest"
        else ("shard-000000.tar: sample" in message)
    )
    assert (
        entry(data, path, *args, "data.synthetic.n_img=2", "data.synthetic.skip_corrupt=True")
        is None
    )


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            "index_not_a_number",
            "shard-000000.idx:2: offset or size 'x512' is not a non-negative integer",
        ),
        ("index_not_utf8", "shard-000000.idx:2: not UTF-8 text"),
        ("json_without_run_id", "shard-000000.tar: sample"),
        ("json_not_an_object", "its .json metadata is not a JSON object"),
    ],
)
def test_damaged_tar_index_or_sample_metadata_is_named_or_left_out(data, damage, expected):
    tar = data / "shards" / "shard-000000.tar"
    lines = sample_lines(tar.with_suffix(".idx"))
    if damage == "index_not_a_number":
        lines[1] = lines[1].replace(b" 512 ", b" x512 ", 1)
        tar.with_suffix(".idx").write_bytes(b"\n".join(lines))
    elif damage == "index_not_utf8":
        lines[1] = lines[1].replace(b".json", b".js\xffn", 1)
        tar.with_suffix(".idx").write_bytes(b"\n".join(lines))
    elif damage == "json_without_run_id":
        damage_tar_member(tar, 1, 0, first_json(tar).replace(b'"run_id"', b'"run_xx"'))
    else:
        damage_tar_member(tar, 1, 0, b"[1, 2]")
    args = ["data.synthetic.layout=webdataset", "optimizer.batch_size=2"]
    message = entry(data, data / "shards", *args)
    assert expected in message and "skip_corrupt=True" in message, message
    if damage == "json_without_run_id":
        assert "metadata lacks run_id" in message
    assert entry(data, data / "shards", *args, "data.synthetic.skip_corrupt=True") is None


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("offset", "shard-000000.idx:3: offset or size 'x"),
        ("not_utf8", "shard-000000.idx:3: not UTF-8 text"),
        ("fields", "shard-000000.idx:3: expected groups of 4 fields"),
        ("json_not_first", r"shard-000000.tar: sample \w+ has no .json metadata first"),
    ],
)
def test_a_damaged_tar_index_line_leaves_out_its_sample_only(data, damage, expected, caplog):
    """The second sample line of the first tar damaged: without skip_corrupt one line naming it;
    with it, that sample is left out, the tar's other sample trained on."""
    idx = data / "shards" / "shard-000000.idx"
    lines = sample_lines(idx)
    fields = lines[2].split(b" ")
    if damage == "offset":
        fields[1] = b"x" + fields[1]
    elif damage == "not_utf8":
        fields[0] = b"js\xffn"
    elif damage == "fields":
        fields = fields[:-1]
    else:  # its first image listed first
        fields = fields[4:8] + fields[:4] + fields[8:]
    lines[2] = b" ".join(fields)
    idx.write_bytes(b"\n".join(lines))
    args = ["data.synthetic.layout=webdataset", "data.synthetic.shuffle_buffer=1"]
    with pytest.raises(InputError, match=f"{expected}.*skip_corrupt=True to leave such samples"):
        loader_batches(data, data / "shards", *args, epochs=0)
    skip = "data.synthetic.skip_corrupt=True"
    with caplog.at_level(logging.WARNING, logger="solo_stablerep.data.readers"):
        batches = loader_batches(data, data / "shards", *args, skip, epochs=3)
    assert re.search(f"{expected}.*: sample left out", caplog.text), caplog.text
    seen = {int(i) for batch in batches for i in batch[0]}
    assert seen == set(range(NUM_CAPTIONS)) - {1}  # caption 1 is the first tar's second sample


def test_a_damaged_manifest_line_is_a_format_error_also_with_skip_corrupt(data):
    """skip_corrupt skips images and samples, not lines of the caption list (docs/data.md)."""
    manifest = data / "ds" / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # caption 2's line cut in the middle
    manifest.write_text("".join(lines))
    message = entry(data, data / "ds", "data.synthetic.skip_corrupt=True")
    assert f"{manifest}:3: " in message, message


def test_a_copied_data_set_is_named_where_it_is_now(data):
    shutil.copytree(data / "ds", data / "moved")  # with its caption index, which stays valid
    message = entry(data, data / "moved", "data.synthetic.n_img=4")
    assert (
        f"{data / 'moved' / 'manifest.jsonl'}: caption" in message
        and "fewer than data.synthetic.n_img=4" in message
    )
    assert str(data / "ds") not in message


def test_a_copied_tar_is_named_with_its_twin(data):
    for ext in (".tar", ".idx"):
        shutil.copy(
            data / "shards" / f"shard-000001{ext}", data / "shards" / f"shard-000001-copy{ext}"
        )
    message = entry(data, data / "shards", "data.synthetic.layout=webdataset")
    assert (
        "shard-000001-copy.tar and shard-000001.tar start with the same sample (a copy?); "
        "remove one" in message
    )


@pytest.mark.slow
def test_an_error_in_a_dataloader_worker_is_one_line(data):
    for tar in (data / "shards").glob(
        "*.tar"
    ):  # each tar's 2nd sample: met while training, not when opening
        damage_tar_member(tar, 2, 0, b"[1, 2]")
    done = run_pretrain_command(
        ["solo-stablerep-pretrain"],
        data / "cfg",
        "stablerep.yaml",
        data,
        *TINY_RUN,
        "data.synthetic.layout=webdataset",
        f"data.train_path={data / 'shards'}",
        "data.num_workers=2",
        "optimizer.batch_size=8",
        "data.synthetic.shuffle_buffer=1",
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("solo-stablerep-pretrain: error: ")
        and "its .json metadata is not a JSON object" in last
    )
    assert "(in DataLoader worker process" in last


# ---------------------------------------------------------- neighbours, on the loaders


def loader_batches(data: Path, path, *overrides, epochs=2):
    """Every batch of ``epochs`` epochs of the loader a cfg with ``overrides`` gives."""
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    cfg = compose_parsed_cfg(
        data / "cfg",
        "stablerep.yaml",
        [f"data.train_path={path}", *SYNTHETIC_CPU_OVERRIDES, "data.synthetic.n_img=2", *overrides],
    )
    loader = prepare_synthetic_train_data(cfg)
    loader = loader.build_loader() if cfg.data.format == "dali" else loader
    return [batch for _ in range(epochs) for batch in loader]


@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
@pytest.mark.parametrize(
    "damage, expected",
    [
        ("json_not_an_object", "sample .*: its .json metadata is not a JSON object"),
        ("json_without_num_images", "sample .*: its .json metadata lacks num_images"),
        (
            "index_line_not_a_number",
            r"shard-000000.idx:3: offset or size 'x\d+' is not a non-negative integer",
        ),
    ],
)
def test_sample_damage_met_while_training_is_named_or_skipped(data, data_format, damage, expected):
    from solo_stablerep.errors import ShardDataError

    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    tar = data / "shards" / "shard-000000.tar"
    args = [
        "data.synthetic.layout=webdataset",
        f"data.format={data_format}",
        "data.synthetic.shuffle_buffer=1",
    ]
    loader_batches(
        data, data / "shards", *args, epochs=0
    )  # opened (and summarised) before the damage
    if damage == "json_not_an_object":
        damage_tar_member(tar, 2, 0, b"[1, 2]")
    elif damage == "json_without_num_images":
        damage_tar_member(tar, 2, 0, first_json(tar, 2).replace(b'"num_images"', b'"num_imagez"'))
    else:  # rewritten in place, same size: the cached summary still matches its size
        lines = sample_lines(tar.with_suffix(".idx"))
        fields = lines[2].split(b" ")
        fields[1] = b"x" + fields[1][1:]
        lines[2] = b" ".join(fields)
        stat = tar.with_suffix(".idx").stat()
        tar.with_suffix(".idx").write_bytes(b"\n".join(lines))
        os.utime(tar.with_suffix(".idx"), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ShardDataError, match=expected):
        loader_batches(data, data / "shards", *args)
    batches = loader_batches(data, data / "shards", *args, "data.synthetic.skip_corrupt=True")
    assert len(batches) == 2 * (NUM_CAPTIONS // 4)


@pytest.mark.parametrize("layout", ["manifest", "webdataset"])
def test_a_dali_decoder_failure_names_the_image(data, layout, monkeypatch):
    """What DALI's decoder rejects beyond the checks before it (here: those checks switched off) is
    named from the batches it was decoding, not DALI's anonymous error."""
    pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    import numpy as np

    from solo_stablerep.data import dali
    from solo_stablerep.errors import InputError

    def unchecked(data_bytes):
        return np.frombuffer(data_bytes, dtype=np.uint8)

    monkeypatch.setattr(dali, "checked_encoded_image", unchecked)
    cut_short(first_image(data))
    shutil.rmtree(data / "shards")
    convert(data / "ds", data / "shards", shard_bytes=6000, progress=False)
    path = data / ("ds" if layout == "manifest" else "shards")
    expected = first_image(data).name if layout == "manifest" else "shard-000000.tar: sample"
    with pytest.raises(InputError, match=f"{expected}.*DALI could not decode this image"):
        loader_batches(
            data,
            path,
            f"data.synthetic.layout={layout}",
            "data.format=dali",
            "optimizer.batch_size=8",
            "data.synthetic.n_img=3",
            "data.synthetic.shuffle_buffer=1",
        )


def test_an_index_with_damaged_arrays_is_rebuilt_when_training_opens_it(data):
    from solo_stablerep.data.index import CaptionIndex

    index = data / "ds" / "manifest.jsonl.index"
    before = index.read_bytes()
    header_end = 16 + int.from_bytes(before[8:16], "little")
    index.write_bytes(
        before[:header_end] + bytes(len(before) - header_end)
    )  # arrays zeroed, header intact
    batches = loader_batches(data, data / "ds", epochs=1)
    assert len(batches) == NUM_CAPTIONS // 4
    lines = (data / "ds" / "manifest.jsonl").read_text().splitlines()[1:]
    assert list(CaptionIndex.from_manifest(data / "ds").captions) == [
        json.loads(line)["caption"] for line in lines
    ]


def test_files_the_loaders_write_get_the_umask_permissions(data):
    old = os.umask(0o002)
    try:
        (data / "ds" / "manifest.jsonl.index").unlink()
        loader_batches(data, data / "ds", epochs=0)
        loader_batches(data, data / "shards", "data.synthetic.layout=webdataset", epochs=0)
    finally:
        os.umask(old)
    for path in (data / "ds" / "manifest.jsonl.index", data / "shards" / "webdataset.json.summary"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o664), path
    assert not list(data.rglob("*.tmp"))


def test_authors_csv_with_a_long_caption_or_not_utf8(data):
    from solo_stablerep.data.index import CaptionIndex

    images = sorted((data / "ds").rglob("*_00.jpg"))
    long = "a very long caption " * 10000  # 200k characters: above the csv module's 128 KiB limit
    rows = [
        f'{p.relative_to(data / "ds")},"{long if i == 1 else f"caption {i}"}"'
        for i, p in enumerate(images)
    ]
    (data / "ds" / "rows.csv").write_text("\n".join(rows) + "\n")
    authors = [
        "data.synthetic.layout=authors",
        "data.synthetic.csv=rows.csv",
        "data.synthetic.roots=[.,.]",
    ]
    assert len(loader_batches(data, data / "ds", *authors, epochs=1)) == NUM_CAPTIONS // 4
    assert (
        CaptionIndex.from_authors_csv(data / "ds" / "rows.csv", [data / "ds"] * 2).captions[1]
        == long
    )
    (data / "ds" / "rows.csv").write_bytes(
        b"\n".join(r.encode() for r in rows[:3]) + b"\nbad\xff.jpg,x\n"
    )
    message = entry(data, data / "ds", *authors)
    assert "rows.csv:" in message and "not valid UTF-8" in message
