"""WebDataset shard writer and converter (data_gen/shards.py, data_gen/convert.py): naming, DALI
index, crash safety (SIGKILL then resume), conversion keeping the images' bytes."""

import io
import json
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from helpers import REPO, cut_copies, make_manifest_dataset
from PIL import Image

from data_gen.convert import convert
from data_gen.settings import GenerationSettings
from data_gen.shards import ShardWriter, read_records
from solo_stablerep.data.shards import (
    HEADER_NAME,
    ShardFormatError,
    make_header,
    read_tar_index,
    tar_index_path,
)
from solo_stablerep.errors import DataGenError


def png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, value // 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def images_of(i: int, m: int = 3) -> list:
    return [png(10 * i + k) for k in range(m)]


def tar_samples(folder):
    """caption id -> {member suffix: bytes} over every tar of the folder; fails on an id twice."""
    samples = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                if suffix == "json":
                    assert key not in samples, f"caption {key} in two samples"
                    samples[key] = {}
                samples[key][suffix] = tar.extractfile(member).read()
    return samples


def test_round_trip_naming_index_and_records(tmp_path):
    header = make_header("run-a", 7, 3, "png", ["x", "y"], {"test": True})
    with ShardWriter(tmp_path, header, max_bytes=9000) as writer:
        for i in range(7):
            writer.write(i, f"cap{i}", f"caption {i}", i % 2, images_of(i))

    tars = sorted(tmp_path.glob("*.tar"))
    assert [t.name for t in tars][:2] == ["shard-000000.tar", "shard-000001.tar"] and len(tars) > 1
    samples = tar_samples(tmp_path)
    assert sorted(samples) == [f"cap{i}" for i in range(7)]
    for i in range(7):
        sample = samples[f"cap{i}"]
        assert sorted(sample) == ["00.png", "01.png", "02.png", "json"]
        assert [sample[f"{k:02d}.png"] for k in range(3)] == images_of(i)
        meta = json.loads(sample["json"])
        assert meta == {
            "caption_id": f"cap{i}",
            "caption": f"caption {i}",
            "label": i % 2,
            "index": i,
            "run_id": "run-a",
            "num_images": 3,
        }
    assert json.loads((tmp_path / HEADER_NAME).read_text())["class_names"] == ["x", "y"]
    records = read_records(tmp_path)
    assert sorted(i for r in records for i in r["captions"]) == list(range(7))
    assert {r["tar"] for r in records} == {t.name for t in tars}

    # the index is exactly what DALI's own tool (wds2idx) writes for the tar
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool is not installed")
    for tar in tars:
        with wds2idx.IndexCreator(str(tar), str(tmp_path / "dali.idx"), verbose=False) as creator:
            creator.create_index()
        assert tar_index_path(tar).read_text() == (tmp_path / "dali.idx").read_text()
        for members in read_tar_index(
            tar_index_path(tar)
        ):  # the offsets point at the members' bytes
            with open(tar, "rb") as f:
                f.seek(members[1][1])
                key = members[0][3].split(".")[0]
                assert f.read(members[1][2]) == samples[key]["00.png"]


def test_other_run_refused_same_run_resumes(tmp_path):
    with ShardWriter(tmp_path, make_header("run-a", 2, 3, "png", None, None)) as writer:
        writer.write(0, "cap0", "c", None, images_of(0))
    with pytest.raises(ShardFormatError, match="holds shards of run run-a, not run-b"):
        ShardWriter(tmp_path, make_header("run-b", 2, 3, "png", None, None))
    with ShardWriter(tmp_path, make_header("run-a", 2, 3, "png", None, None)) as writer:
        assert np.flatnonzero(writer.done).tolist() == [0]
        writer.write(1, "cap1", "c", None, images_of(1))
    assert sorted(tar_samples(tmp_path)) == ["cap0", "cap1"]
    with ShardWriter(
        tmp_path, make_header("run-b", 2, 3, "png", None, None), overwrite=True
    ) as writer:
        assert not writer.done.any()
    assert not list(tmp_path.glob("*.tar"))


def test_records_log_cut_at_every_byte_of_its_last_record_resumes_twice(tmp_path):
    """A crash that cuts the writer's last record (its tar renamed, the line half written): the
    rerun redoes that tar, no caption is lost or written twice, and a second rerun finds all done
    (the cut line was once glued to the next record, and the next run refused the log)."""
    header = make_header("run-a", 4, 3, "png", None, None)
    pristine = tmp_path / "pristine"
    with ShardWriter(pristine, header, max_bytes=1) as writer:  # one tar per caption
        for i in range(4):
            writer.write(i, f"cap{i}", f"caption {i}", None, images_of(i))
    for cut, _, out in cut_copies(pristine, "records/shard.jsonl", tmp_path):
        for _ in range(2):  # resume, then resume again
            with ShardWriter(out, header, max_bytes=1) as writer:
                for i in np.flatnonzero(~writer.done):
                    writer.write(int(i), f"cap{i}", f"caption {i}", None, images_of(int(i)))
        samples = tar_samples(out)  # fails on a caption written twice
        assert sorted(samples) == [f"cap{i}" for i in range(4)], cut
        assert sorted(i for r in read_records(out) for i in r["captions"]) == [0, 1, 2, 3], cut


KILLED_WRITER = textwrap.dedent("""
    import io, os, signal, sys
    from PIL import Image
    from data_gen.shards import ShardWriter
    from solo_stablerep.data.shards import make_header
    def png(v):
        b = io.BytesIO()
        Image.new("RGB", (8, 8), (v % 256, v // 256, 7)).save(b, "PNG")
        return b.getvalue()
    header = make_header("run-a", 20, 3, "png", None, None)
    with ShardWriter(sys.argv[1], header, max_bytes=9000) as writer:
        for i in range(20):
            if i == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # in the middle of a tar
            if not writer.done[i]:
                images = [png(10 * i + k) for k in range(3)]
                writer.write(i, f"cap{i}", f"caption {i}", None, images)
""")


def test_sigkill_loses_only_the_tar_in_progress_and_a_rerun_completes(tmp_path):
    out = tmp_path / "shards"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = {"PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, str(script), str(out), "11"], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert list(out.glob(".shard-*.tar.tmp")), "the kill should leave a tar in progress"
    done = {i for r in read_records(out) for i in r["captions"]}
    assert done and max(done) < 11 and sorted(done) == list(range(len(done)))
    # a tar renamed but not recorded (killed between the two) is not trusted either
    stray = out / "shard-000099.tar"
    stray.write_bytes(b"x" * 1024)

    rerun = subprocess.run(
        [sys.executable, str(script), str(out), "-1"], env=env, capture_output=True
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert not list(out.glob(".*.tmp")) and not stray.exists()
    samples = tar_samples(out)  # fails on a caption written twice
    assert sorted(samples) == sorted(f"cap{i}" for i in range(20))
    assert all(
        [samples[f"cap{i}"][f"{k:02d}.png"] for k in range(3)] == images_of(i) for i in range(20)
    )


def test_convert_manifest_keeps_bytes_and_labels_and_resumes(tmp_path):
    make_manifest_dataset(tmp_path / "ds", 9, 4, class_names=["a", "b", "c"])
    summary = convert(tmp_path / "ds", tmp_path / "shards", shard_bytes=20000, progress=False)
    assert summary["captions_written"] == 9
    samples = tar_samples(tmp_path / "shards")
    from solo_stablerep.data.manifest import read_manifest

    _, records = read_manifest(tmp_path / "ds")
    for i, record in enumerate(records):
        sample = samples[record.caption_id]
        assert [sample[f"{k:02d}.png"] for k in range(4)] == [
            (tmp_path / "ds" / p).read_bytes() for p in record.images
        ]
        meta = json.loads(sample["json"])
        assert (meta["index"], meta["caption"], meta["label"]) == (i, record.caption, record.label)
    again = convert(tmp_path / "ds", tmp_path / "shards", progress=False)
    assert (again["captions_written"], again["captions_already_done"]) == (0, 9)


def test_convert_generated_procedural_set(tmp_path):
    """Images generated as a manifest (procedural backend) reach the shards byte for byte."""
    from data_gen.runner import RunOptions, generate

    (tmp_path / "captions.txt").write_text(
        "a red digit 3 on a dark background\na blue digit 8 on white\n"
    )
    settings = GenerationSettings(
        backend="procedural", images_per_caption=3, resolution=64, image_size=32
    )
    generate(tmp_path / "captions.txt", tmp_path / "gen", settings, RunOptions(progress=False))
    convert(tmp_path / "gen", tmp_path / "shards", progress=False)
    from solo_stablerep.data.manifest import read_manifest

    _, records = read_manifest(tmp_path / "gen")
    samples = tar_samples(tmp_path / "shards")
    for record in records:
        assert [samples[record.caption_id][f"{k:02d}.jpg"] for k in range(3)] == [
            (tmp_path / "gen" / p).read_bytes() for p in record.images
        ]


def test_convert_authors_layout_and_cli(tmp_path):
    rows = []
    for r in range(2):
        for i in range(3):
            (tmp_path / "src" / f"seed{r}" / "img").mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / f"seed{r}" / "img" / f"{i}.png").write_bytes(png(100 * r + i))
    rows = "".join(f"img/{i}.png,caption {i}\n" for i in range(3))
    (tmp_path / "src" / "rows.csv").write_text("path,caption\n" + rows)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_gen",
            "convert",
            str(tmp_path / "src"),
            str(tmp_path / "shards"),
            "--layout",
            "authors",
            "--csv",
            "rows.csv",
            "--csv-header",
            "--roots",
            "seed0",
            "seed1",
            "--no-progress",
        ],
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    samples = tar_samples(tmp_path / "shards")
    assert sorted(samples) == [
        "2",
        "3",
        "4",
    ]  # caption id = CSV line number, as the CSV loader numbers them
    assert [samples["3"]["00.png"], samples["3"]["01.png"]] == [png(1), png(101)]
    assert json.loads(samples["3"]["json"])["caption"] == "caption 1"


def test_convert_missing_image_is_one_line(tmp_path):
    make_manifest_dataset(tmp_path / "ds", 3, 2)
    victim = sorted((tmp_path / "ds" / "images").rglob("*.png"))[3]
    victim.unlink()
    with pytest.raises(
        DataGenError, match=rf"{victim.name}: image file missing \(caption cap0001\)"
    ):
        convert(tmp_path / "ds", tmp_path / "shards", progress=False)


# ------------------------------------------------------- stablerep-generate --format webdataset

PROCEDURAL = dict(backend="procedural", images_per_caption=3, resolution=48, image_size=24)
DIGITS = "".join(
    f"a {c} digit {d} on a dark background\n" for d in range(6) for c in ("red", "blue")
)
SHEET = "contact_sheets/part-00000-of-00001.png"  # of a run in one process


def sheet_pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def generate_shards(captions, out, num_parts=1, shard_bytes=6000, **settings):
    from data_gen.runner import RunOptions, generate

    for part_index in range(num_parts):
        generate(
            captions,
            out,
            GenerationSettings(**{**PROCEDURAL, **settings}),
            RunOptions(
                format="webdataset",
                shard_bytes=shard_bytes,
                num_parts=num_parts,
                part_index=part_index,
                batch_size=2,
                progress=False,
            ),
        )


def test_generate_as_shards_and_as_manifest_gives_the_same_bytes(tmp_path):
    from data_gen.runner import RunOptions, generate
    from solo_stablerep.data.manifest import read_manifest

    captions = tmp_path / "captions.txt"
    captions.write_text(DIGITS)
    generate(
        captions, tmp_path / "gen", GenerationSettings(**PROCEDURAL), RunOptions(progress=False)
    )
    generate_shards(
        captions, tmp_path / "shards", num_parts=2
    )  # two processes, one tar prefix each

    _, records = read_manifest(tmp_path / "gen")
    samples = tar_samples(tmp_path / "shards")  # fails on a caption written twice
    assert sorted(samples) == sorted(r.caption_id for r in records)
    for i, record in enumerate(records):
        sample = samples[record.caption_id]
        assert [sample[f"{k:02d}.jpg"] for k in range(3)] == [
            (tmp_path / "gen" / p).read_bytes() for p in record.images
        ]
        meta = json.loads(sample["json"])
        assert (meta["index"], meta["caption"]) == (i, record.caption)
    header = json.loads((tmp_path / "shards" / HEADER_NAME).read_text())
    assert (header["num_captions"], header["images_per_caption"], header["image_ext"]) == (
        len(records),
        3,
        "jpg",
    )
    prefixes = {tar.name.rsplit("-", 1)[0] for tar in (tmp_path / "shards").glob("*.tar")}
    assert prefixes == {"part-00000-of-00002", "part-00001-of-00002"}
    assert not (tmp_path / "shards" / "manifest.jsonl").exists()  # no merge step for shards

    # the same settings and captions resume (nothing to do); other settings are refused
    generate_shards(captions, tmp_path / "shards", num_parts=2)
    assert tar_samples(tmp_path / "shards") == samples
    with pytest.raises(ShardFormatError, match="holds shards of run .* pass --overwrite"):
        generate_shards(captions, tmp_path / "shards", seed=1)


def test_shard_generation_writes_the_same_contact_sheet_as_the_manifest_layout(tmp_path):
    from data_gen.runner import RunOptions, generate
    from solo_stablerep.data.manifest import read_manifest

    captions = tmp_path / "captions.txt"
    captions.write_text(DIGITS)
    for layout in ("manifest", "webdataset"):
        generate(
            captions,
            tmp_path / layout,
            GenerationSettings(**PROCEDURAL),
            RunOptions(
                format=layout,
                shard_bytes=3000,
                num_parts=1,
                part_index=0,
                batch_size=2,
                contact_sheet_captions=5,
                progress=False,
            ),
        )
    sheet = sheet_pixels(tmp_path / "webdataset" / SHEET)
    thumb, text_width = 96, 220  # contact_sheet's defaults; a cell is the thumbnail + 4 px
    assert sheet.shape == (
        5 * (thumb + 4),
        text_width + 3 * (thumb + 4),
        3,
    )  # 5 captions x 3 images
    # the last caption shown lies in a later tar than the first: its images are read at their
    # offsets
    tar_of = {i: r["tar"] for r in read_records(tmp_path / "webdataset") for i in r["captions"]}
    assert tar_of[4] != tar_of[0]
    _, records = read_manifest(tmp_path / "manifest")
    with Image.open(tmp_path / "manifest" / records[4].images[2]) as image:
        expected = np.asarray(image.convert("RGB").resize((thumb, thumb)))
    y, x = 4 * (thumb + 4) + 2, text_width + 2 * (thumb + 4)
    np.testing.assert_array_equal(sheet[y : y + thumb, x : x + thumb], expected)
    np.testing.assert_array_equal(
        sheet, sheet_pixels(tmp_path / "manifest" / SHEET)
    )  # text rows too


KILLED_GENERATION = textwrap.dedent("""
    import os, signal, sys
    from data_gen import shards
    from data_gen.runner import RunOptions, generate
    from data_gen.settings import GenerationSettings
    write = shards.ShardWriter.write
    def write_or_die(self, index, *args):
        if index == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run: some tars finished, one in progress
        write(self, index, *args)
    shards.ShardWriter.write = write_or_die
    settings = GenerationSettings(
        backend="procedural", images_per_caption=3, resolution=48, image_size=24
    )
    generate(sys.argv[1], sys.argv[2], settings,
             RunOptions(format="webdataset", shard_bytes=6000, batch_size=2, progress=False))
""")


def test_sigkill_during_shard_generation_then_rerun_has_every_caption_once(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text(DIGITS)
    script = tmp_path / "generate.py"
    script.write_text(KILLED_GENERATION)
    out, env = tmp_path / "killed", {"PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, str(script), str(captions), str(out), "9"], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    done = {i for r in read_records(out) for i in r["captions"]}
    assert done and max(done) < 9, "the kill should come after some tars and before the end"
    assert not (out / SHEET).exists()  # written at the end of a run

    rerun = subprocess.run(
        [sys.executable, str(script), str(captions), str(out), "-1"], env=env, capture_output=True
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert not list(out.glob(".*.tmp"))
    generate_shards(captions, tmp_path / "clean")  # never killed
    # tar_samples fails on a caption written twice; the dicts hold every image's bytes
    assert tar_samples(out) == tar_samples(tmp_path / "clean")
    assert sorted(i for r in read_records(out) for i in r["captions"]) == list(range(12))
    # the rerun's sheet (first 6 captions) shows captions the killed run generated, read from its
    # tars
    assert done & set(range(6))
    np.testing.assert_array_equal(
        sheet_pixels(out / SHEET), sheet_pixels(tmp_path / "clean" / SHEET)
    )
