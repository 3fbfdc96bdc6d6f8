"""The parts (processes) of a generation run: the flags that choose them, their deprecated
former names, and outputs of earlier versions (parts named ``shard-*``) that must still resume
and merge."""

import json
import logging

import pytest
from helpers import cut_copies, procedural_flags
from test_shards import DIGITS, PROCEDURAL, generate_shards, tar_samples

from data_gen.cli import main
from data_gen.output import part_name
from data_gen.runner import RunOptions, generate
from data_gen.settings import GenerationSettings
from solo_stablerep.data.manifest import read_manifest
from solo_stablerep.storage import iter_log

FLAGS = procedural_flags()


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text(DIGITS, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "flags, deprecated",
    [
        (["--num-shards", "2", "--part-index", "1"], "--num-shards"),
        (["--num-parts", "2", "--shard-index", "1"], "--shard-index"),
    ],
)
def test_deprecated_part_flags_still_work_with_a_warning(
    captions, tmp_path, caplog, flags, deprecated
):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="data_gen"):
        assert main([str(captions), str(out), *FLAGS, *flags]) == 0
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{deprecated} is deprecated"), warnings
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "part-00001-of-00002.jsonl",
        "part-00001-of-00002.summary.json",
    ]


def test_a_deprecated_flag_beside_its_new_name_is_one_line(captions, tmp_path, capsys):
    argv = [str(captions), str(tmp_path / "out"), *FLAGS, "--num-parts", "2", "--num-shards", "2"]
    assert main([*argv, "--part-index", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "stablerep-generate: error: --num-shards is the deprecated name of --num-parts: "
        "give --num-parts alone"
    )


def run_part(captions, out, part_index, num_parts=2, format="manifest"):
    return generate(
        captions,
        out,
        GenerationSettings(**PROCEDURAL),
        RunOptions(
            format=format,
            shard_bytes=6000,
            num_parts=num_parts,
            part_index=part_index,
            batch_size=2,
            progress=False,
        ),
    )


def legacy_name(name):
    return name.replace("part-", "shard-", 1)


def test_an_output_of_the_previous_version_resumes_and_merges(captions, tmp_path):
    """Parts named ``shard-*`` in ``shards/`` (the previous version's layout), part 1 cut short by a
    crash mid-line: rerunning part 1 resumes under its old name, the merge reads the old folder,
    nothing is lost or written twice, and a second rerun has nothing left to do."""
    reference = tmp_path / "reference"
    run_part(captions, reference, 0, num_parts=1)
    out = tmp_path / "old"
    for part in range(2):
        run_part(captions, out, part)
    (out / "manifest.jsonl").unlink()
    (out / "manifest.jsonl.index").unlink()
    (out / "parts").rename(out / "shards")  # the previous version's names
    for path in [*(out / "shards").iterdir(), *(out / "contact_sheets").iterdir()]:
        path.rename(path.with_name(legacy_name(path.name)))
    log = out / "shards" / "shard-00001-of-00002.jsonl"
    lines = log.read_bytes().split(b"\n")
    log.write_bytes(lines[0] + b"\n" + lines[1][:20])  # part 1: one caption done, one cut
    (out / "shards" / "shard-00001-of-00002.summary.json").unlink()
    assert part_name(out, 1, 2) == "shard-00001-of-00002"
    assert part_name(out, 1, 3) == "part-00001-of-00003"

    summary = run_part(captions, out, 1)
    assert summary["part"] == "shard-00001-of-00002" and summary["captions_already_done"] == 1
    assert not (out / "parts").exists()
    expected = [(r.caption_id, r.images) for r in read_manifest(reference)[1]]
    assert [(r.caption_id, r.images) for r in read_manifest(out)[1]] == expected
    assert run_part(captions, out, 1)["captions_generated"] == 0  # a second resume
    assert main(["merge", str(out)]) == 0
    assert [(r.caption_id, r.images) for r in read_manifest(out)[1]] == expected


def test_tar_shards_of_the_previous_version_resume_under_their_prefix(tmp_path, captions):
    """Tars and records of parts named ``shard-*``, part 1's last record cut mid-line (its tar
    renamed, never recorded): the rerun keeps the old prefix, redoes that tar and leaves every
    caption in exactly one sample; a second rerun writes nothing."""
    out = tmp_path / "old"
    generate_shards(captions, out, num_parts=2)
    expected = sorted(tar_samples(out))
    for path in [*out.glob("part-*"), *(out / "records").iterdir()]:
        path.rename(path.with_name(legacy_name(path.name)))
    for log in (out / "records").glob("*.jsonl"):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        text = "".join(json.dumps({**r, "tar": legacy_name(r["tar"])}) + "\n" for r in records)
        log.write_text(text)
    log = out / "records" / "shard-00001-of-00002.jsonl"
    assert log.read_text().count("\n") > 1, "part 1 should have written several tars"
    log.write_bytes(log.read_bytes()[:-10])

    summary = run_part(captions, out, 1, format="webdataset")
    assert summary["part"] == "shard-00001-of-00002" and summary["captions_generated"] > 0
    assert not list(out.glob("part-*"))
    assert sorted(tar_samples(out)) == expected  # fails on a caption written twice
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert run_part(captions, out, 1, format="webdataset")["captions_generated"] == 0
    assert sorted(p.name for p in out.glob("*.tar")) == tars


def test_a_part_log_cut_at_every_byte_of_its_last_record_resumes_twice(tmp_path):
    """A crash that cuts the part's log inside its last record: the rerun redoes that caption
    (its images rewritten in place), the log then holds every caption once, a second rerun has
    nothing to do, and the merge gives the uninterrupted run's manifest."""
    captions = tmp_path / "captions.txt"
    captions.write_text("a red 1\na blue 2\na green 3\n", encoding="utf-8")
    settings = GenerationSettings(**{**PROCEDURAL, "images_per_caption": 1})
    options = RunOptions(batch_size=1, contact_sheet_captions=0, merge=False, progress=False)
    pristine = tmp_path / "pristine"
    generate(captions, pristine, settings, options)
    log = "parts/part-00000-of-00001.jsonl"
    for cut, whole, out in cut_copies(pristine, log, tmp_path):
        (out / "parts" / "part-00000-of-00001.summary.json").unlink()
        generated = [generate(captions, out, settings, options)["captions_generated"]]
        generated += [generate(captions, out, settings, options)["captions_generated"]]
        assert generated == [0 if whole else 1, 0], cut
        assert [entry["index"] for entry in iter_log(out / log)] == [0, 1, 2], cut
    assert main(["merge", str(pristine)]) == 0
    assert [r.caption for r in read_manifest(pristine)[1]] == ["a red 1", "a blue 2", "a green 3"]
