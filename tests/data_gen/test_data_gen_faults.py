"""Faults and bad input met by `stablerep-generate`, `convert` and `merge`, run as a user runs them
(the console command in a subprocess): every case ends as one line naming the bad input and what to
do, or as a success with nothing lost, and no file is left behind (issue 21)."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from helpers import REPO, procedural_flags

from data_gen.shards import read_records
from solo_stablerep.data.shards import iter_indexed_samples

PROCEDURAL = procedural_flags()
CAPTIONS = "a red cat\na blue dog\na green bird\n"


def generate(*args, umask=None, cwd=None):
    """``stablerep-generate ARGS`` in a subprocess; returns (exit code, stderr)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-m", "data_gen", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        umask=-1 if umask is None else umask,
        cwd=cwd,
        timeout=300,
    )
    return done.returncode, done.stderr


def assert_one_line_error(result, *expected):
    code, stderr = result
    assert code == 2, stderr
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
    for text in expected:
        assert text in stderr, stderr


def temporaries(folder):
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def dataset(tmp_path):
    """A generated manifest data set (3 captions x 2 procedural 16 px JPEGs)."""
    (tmp_path / "captions.txt").write_text(CAPTIONS)
    assert generate(tmp_path / "captions.txt", tmp_path / "ds", *PROCEDURAL)[0] == 0
    return tmp_path / "ds"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_of_a_data_set_gets_the_umask_permissions(tmp_path, umask):
    (tmp_path / "captions.txt").write_text(CAPTIONS)
    assert generate(tmp_path / "captions.txt", tmp_path / "ds", *PROCEDURAL, umask=umask)[0] == 0
    assert (
        generate("convert", tmp_path / "ds", tmp_path / "shards", "--no-progress", umask=umask)[0]
        == 0
    )
    files = [
        p for p in [*(tmp_path / "ds").rglob("*"), *(tmp_path / "shards").rglob("*")] if p.is_file()
    ]
    assert {"manifest.jsonl", "manifest.jsonl.index", "webdataset.json", "shard-000000.tar"} <= {
        p.name for p in files
    }
    # the images, tars and generation.json always had these; manifest and indexes were 0600
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: oct(0o666 & ~umask) for p in files
    }


def test_convert_notices_an_edit_that_keeps_the_manifest_size(dataset, tmp_path):
    shards = tmp_path / "shards"
    assert generate("convert", dataset, shards, "--no-progress")[0] == 0
    manifest = dataset / "manifest.jsonl"
    text = manifest.read_text()
    assert "a red cat" in text
    manifest.write_text(text.replace("a red cat", "a red car"))  # same size, same first line
    assert_one_line_error(generate("convert", dataset, shards, "--no-progress"), "pass --overwrite")
    assert generate("convert", dataset, shards, "--no-progress", "--overwrite")[0] == 0
    captions = {
        json.loads(sample["json"])["caption"]
        for tar in shards.glob("*.tar")
        for sample in iter_indexed_samples(tar)
    }
    assert "a red car" in captions and "a red cat" not in captions
    assert generate("convert", dataset, shards, "--no-progress")[0] == 0  # the same source resumes


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"a red\0 cat\nok line\n", "captions.txt:1: a NUL byte"),
        (
            "a red cat\nblue dog\n".encode("utf-16-le"),
            "captions.txt:1: a NUL byte (UTF-16 without a byte-order mark",
        ),
        (
            "a red cat\nblue dog\n".encode("utf-16"),
            "captions.txt: UTF-16 text (byte-order mark); save it as UTF-8",
        ),
        (
            b"a red cat\rblue dog\rgreen bird\r",
            "captions.txt:1: a carriage return inside the line (CR-only",
        ),
    ],
)
def test_caption_files_in_another_encoding_or_with_cr_line_endings_are_refused(
    tmp_path, content, expected
):
    (tmp_path / "captions.txt").write_bytes(content)
    assert_one_line_error(
        generate(tmp_path / "captions.txt", tmp_path / "out", *PROCEDURAL), expected
    )
    assert not (tmp_path / "out").exists()


def test_a_nul_line_is_skipped_with_skip_bad_lines(tmp_path):
    (tmp_path / "captions.txt").write_bytes(b"a red cat\nbad\0line\na blue dog\n")
    assert (
        generate(tmp_path / "captions.txt", tmp_path / "out", *PROCEDURAL, "--skip-bad-lines")[0]
        == 0
    )
    assert (tmp_path / "out" / "manifest.jsonl").read_text().count("\n") == 3  # header + 2 captions


def test_a_caption_longer_than_the_csv_field_limit_is_a_caption(tmp_path):
    long = "a very long caption " * 10000  # 200k characters: above the csv module's 128 KiB limit
    (tmp_path / "captions.csv").write_text(f'caption\na red cat\n"{long}"\n')
    assert generate(tmp_path / "captions.csv", tmp_path / "out", *PROCEDURAL)[0] == 0
    assert long.strip() in (tmp_path / "out" / "manifest.jsonl").read_text()


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("--guidance-scale", "-1", ">= 0"),
        ("--guidance-scale", "nan", ">= 0"),  # was: accepted, compared false to 0
        ("--guidance-scale", "abc", "not a number"),
        ("--steps", "0", ">= 1"),
        ("--steps", "2.5", "not a whole number"),  # was: argparse's usage and error
        ("--images-per-caption", "0", ">= 1"),
        ("--images-per-caption", "101", "<= 100"),
        ("--resolution", "0", ">= 8"),
        ("--image-size", "0", ">= 1"),
        ("--quality", "0", ">= 1 and <= 100"),
        ("--quality", "101", ">= 1 and <= 100"),
        ("--seed", "-1", ">= 0"),
        ("--batch-size", "0", ">= 1"),
        ("--num-parts", "0", ">= 1"),
        ("--part-index", "-1", ">= 0"),
        ("--shard-size", "inf", "> 0"),
        ("--contact-sheet-captions", "-1", ">= 0"),  # was: all but the last caption shown
    ],
)
def test_numeric_options_out_of_range_are_one_line_before_any_work(
    tmp_path, capsys, option, value, allowed
):
    from data_gen.cli import main

    (tmp_path / "captions.txt").write_text(CAPTIONS)
    args = [tmp_path / "captions.txt", tmp_path / "out", *PROCEDURAL, option, value]
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stablerep-generate: error: ") and "\n" not in err, err
    for part in (f"argument {option}", value, allowed):
        assert part in err, (part, err)
    assert not (tmp_path / "out").exists()


def test_an_option_error_through_the_command_is_one_line_without_usage(tmp_path):
    assert_one_line_error(
        generate(tmp_path / "captions.txt", tmp_path / "out", "--quality", "0"),
        "stablerep-generate: error: argument --quality: got 0; give a whole number >= 1",
    )
    assert_one_line_error(generate("merge", tmp_path, "--nope"), "unrecognized arguments: --nope")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["0", "-1", "nan"])
def test_shard_size_must_be_positive(dataset, tmp_path, size):
    assert_one_line_error(
        generate("convert", dataset, tmp_path / "s", "--shard-size", size), "--shard-size"
    )
    assert_one_line_error(
        generate(
            tmp_path / "captions.txt",
            tmp_path / "w",
            *PROCEDURAL,
            "--format",
            "webdataset",
            "--shard-size",
            size,
        ),
        "argument --shard-size",
        "> 0",
    )
    assert not (tmp_path / "s").exists() and not (tmp_path / "w").exists()


def test_convert_overwrite_deletes_foreign_tars(dataset, tmp_path):
    from solo_stablerep.data.readers import ShardReader

    assert generate("convert", dataset, tmp_path / "shards", "--no-progress")[0] == 0
    (tmp_path / "mixed").mkdir()
    shutil.copy(tmp_path / "shards" / "shard-000000.tar", tmp_path / "mixed" / "foreign.tar")
    assert_one_line_error(
        generate("convert", dataset, tmp_path / "mixed", "--no-progress"),
        "holds tars not written by this tool; pass --overwrite",
    )
    assert generate("convert", dataset, tmp_path / "mixed", "--no-progress", "--overwrite")[0] == 0
    assert not (tmp_path / "mixed" / "foreign.tar").exists()
    assert len(ShardReader(str(tmp_path / "mixed"))) == 3  # trainable: every caption once


def test_convert_onto_a_file_or_into_a_read_only_folder(dataset, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    assert_one_line_error(
        generate("convert", dataset, tmp_path / "a_file", "--no-progress"), "is not a folder"
    )
    assert_one_line_error(
        generate("convert", dataset, tmp_path / "a_file" / "sub", "--no-progress"),
        "is not a folder",
    )
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "ro").mkdir(mode=0o555)
    assert_one_line_error(
        generate("convert", dataset, tmp_path / "ro" / "shards", "--no-progress"), "is not writable"
    )


def test_a_damaged_generation_json_is_named(dataset, tmp_path):
    (dataset / "generation.json").write_text("{broken")
    assert_one_line_error(
        generate(tmp_path / "captions.txt", dataset, *PROCEDURAL),
        "generation.json: damaged, not valid JSON",
        "pass --overwrite",
    )
    assert_one_line_error(
        generate("merge", dataset), "generation.json: damaged", "rerun the generation"
    )
    (dataset / "generation.json").write_text("[1, 2]")
    assert_one_line_error(generate("merge", dataset), "not a generation record")
    assert generate(tmp_path / "captions.txt", dataset, *PROCEDURAL, "--overwrite")[0] == 0
    assert (dataset / "manifest.jsonl").read_text().count("\n") == 4


def test_caption_index_arrays_damaged_behind_a_valid_header_are_rebuilt(dataset, tmp_path):
    index = dataset / "manifest.jsonl.index"
    header_end = 16 + int.from_bytes(index.read_bytes()[8:16], "little")
    data = bytearray(index.read_bytes())
    data[header_end:] = b"\xff" * (len(data) - header_end)  # every array garbage, the header intact
    index.write_bytes(bytes(data))
    code, stderr = generate("convert", dataset, tmp_path / "shards", "--no-progress")
    assert code == 0 and "caption index damaged (id offsets): rebuilding it" in stderr, stderr
    captions = {
        json.loads(s["json"])["caption"]
        for s in iter_indexed_samples(tmp_path / "shards" / "shard-000000.tar")
    }
    assert captions == {"a red cat", "a blue dog", "a green bird"}


def test_temporaries_of_writers_killed_by_sigkill_are_removed_by_the_next_writer(dataset, tmp_path):
    # what a SIGKILL during each atomic write leaves: the temporary file, never renamed
    leftovers = [
        dataset / ".manifest.jsonl.0123456789ab.tmp",
        dataset / ".manifest.jsonl.index.0123456789ab.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half written")
    assert generate("merge", dataset)[0] == 0  # rewrites the manifest and its index
    assert temporaries(dataset) == []
    # the caption index alone (killed while a training run built it): removed by the next build
    (dataset / "manifest.jsonl.index").unlink()
    leftovers[1].write_bytes(b"half written")
    assert generate("convert", dataset, tmp_path / "shards", "--no-progress")[0] == 0
    assert temporaries(dataset) == [] and (dataset / "manifest.jsonl.index").exists()
    # the shard summary (killed while a training run summarised the tars): the next summariser
    from solo_stablerep.data.readers import ShardReader

    summary_tmp = tmp_path / "shards" / ".webdataset.json.summary.0123456789ab.tmp"
    summary_tmp.write_bytes(b"half written")
    assert len(ShardReader(str(tmp_path / "shards"))) == 3
    assert temporaries(tmp_path / "shards") == []
    assert read_records(tmp_path / "shards")[0]["samples"] == 3
