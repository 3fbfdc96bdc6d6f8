"""Captions parsing and part resolution (no model needed)."""

import hashlib
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from helpers import REPO, procedural_flags

from data_gen.captions import load_captions
from data_gen.cli import main
from data_gen.settings import GenerationSettings, image_seed, resolve_part
from solo_stablerep.data.manifest import read_manifest
from solo_stablerep.errors import DataGenError

PROCEDURAL = procedural_flags()


def test_normalise_dedup_empty_and_ids(tmp_path):
    decomposed = unicodedata.normalize("NFD", "a café  by the\tsea")
    path = tmp_path / "c.txt"
    path.write_text(f"{decomposed}\n\n   \na café by the sea\r\nanother one\n", encoding="utf-8")
    result = load_captions(path)
    assert [c.text for c in result.captions] == ["a café by the sea", "another one"]
    assert result.empty == 2 and result.duplicates == 1 and result.lines == 5
    assert (
        result.captions[0].caption_id == hashlib.sha1("a café by the sea".encode()).hexdigest()[:16]
    )
    assert [c.index for c in result.captions] == [0, 1] and result.class_names is None


def test_non_utf8_line_is_an_error_with_its_number_or_skipped_on_request(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\nlast\n")
    with pytest.raises(DataGenError, match=r"c\.txt:3: not valid UTF-8"):
        load_captions(path)
    result = load_captions(path, skip_bad_lines=True)
    assert [c.text for c in result.captions] == [
        "fine",
        "also fine",
        "last",
    ] and result.bad_utf8_skipped == 1
    assert main([str(path), str(tmp_path / "out"), *PROCEDURAL]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_integer_labels_stay_and_names_map_to_ids(tmp_path):
    ints = tmp_path / "ints.tsv"
    ints.write_text("label\tcaption\n3\ta three\n0\ta zero\n3\tanother three\n", encoding="utf-8")
    result = load_captions(ints)
    assert [c.label for c in result.captions] == [3, 0, 3] and result.class_names == [
        "0",
        "1",
        "2",
        "3",
    ]
    names = tmp_path / "names.csv"
    names.write_text('caption,label\n"a dog, running",dog\na cat,cat\n', encoding="utf-8")
    result = load_captions(names)
    assert result.class_names == ["cat", "dog"] and [c.label for c in result.captions] == [1, 0]
    assert result.captions[0].text == "a dog, running"


def test_labels_reach_the_manifest(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("caption,label\na red digit 1,one\na blue digit 2,two\n", encoding="utf-8")
    assert main([str(path), str(tmp_path / "out"), *PROCEDURAL]) == 0
    header, records = read_manifest(tmp_path / "out")
    assert header["class_names"] == ["one", "two"]
    assert [(r.caption, header["class_names"][r.label]) for r in records] == [
        ("a red digit 1", "one"),
        ("a blue digit 2", "two"),
    ]


def test_missing_caption_column_and_empty_label_are_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\na cat,cat\n", encoding="utf-8")
    with pytest.raises(DataGenError, match="no column 'caption'"):
        load_captions(path)
    path.write_text("caption,label\na cat,cat\na dog,\n", encoding="utf-8")
    with pytest.raises(DataGenError, match=r"c\.csv:3: empty label"):
        load_captions(path)


def test_parts_from_flags_torchrun_and_slurm():
    assert resolve_part(4, 2, env={}) == (4, 2)
    assert resolve_part(None, None, env={"WORLD_SIZE": "8", "RANK": "5"}) == (8, 5)
    assert resolve_part(None, None, env={"SLURM_NTASKS": "16", "SLURM_PROCID": "15"}) == (16, 15)
    assert resolve_part(None, None, env={}) == (1, 0)
    with pytest.raises(DataGenError, match="--part-index 4"):
        resolve_part(4, 4, env={})


def test_seeds_depend_on_seed_caption_and_k_only():
    seeds = {image_seed(s, c, k) for s in (0, 1) for c in ("aa", "bb") for k in range(3)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, "aa", 1) == image_seed(0, "aa", 1)


def test_procedural_settings_null_the_diffusion_fields():
    stored = GenerationSettings(backend="procedural").validate().resolved("cpu").to_dict()
    assert (
        stored["model"] is None
        and stored["guidance_scale"] is None
        and stored["images_per_caption"] == 10
    )
    with pytest.raises(DataGenError, match="--dtype fp16"):
        GenerationSettings(dtype="fp16").validate().resolved("cpu")


def test_tsv_keeps_quotes_and_never_merges_rows(tmp_path):
    # cc12m captions begin with quotes; a csv-style reader would strip them and let the open one
    # swallow rows
    path = tmp_path / "c.tsv"
    captions = [
        '"Hello" said the cat',
        '"an open quote',
        "plain",
        'a "quoted" word',
        '"""',
        "last one",
    ]
    path.write_text("caption\n" + "".join(f"{c}\n" for c in captions), encoding="utf-8")
    assert [c.text for c in load_captions(path).captions] == captions


def test_ambiguous_csv_quoting_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        'caption,label\n"a dog, running",dog\n"an open quote,cat\na cat,cat\n', encoding="utf-8"
    )
    with pytest.raises(DataGenError, match=r"c\.csv:3: bad CSV quoting"):
        load_captions(path)
    path.write_text('caption,label\n"Hello" said the cat,cat\n', encoding="utf-8")
    with pytest.raises(DataGenError, match=r"c\.csv:2: bad CSV quoting"):
        load_captions(path)


def test_headerless_cc12m_tsv_by_column_number(tmp_path):
    path = tmp_path / "cc12m.tsv"
    rows = [
        ("https://x.org/1.jpg", '"Sunset" over the <PERSON> lake'),
        ("https://x.org/2.jpg", "a red bus"),
        ("https://x.org/3.jpg", "a red bus"),
    ]
    path.write_text("".join(f"{url}\t{caption}\n" for url, caption in rows), encoding="utf-8")
    result = load_captions(path, caption_column="2")
    assert [c.text for c in result.captions] == ['"Sunset" over the <PERSON> lake', "a red bus"]
    assert result.duplicates == 1 and result.class_names is None
    with pytest.raises(DataGenError, match="no column 'caption'.*a number"):
        load_captions(path)  # the first row is data, not a header: say how to read it
    with pytest.raises(DataGenError, match=r"cc12m\.tsv:1: 2 columns, column 3 is read"):
        load_captions(path, caption_column="3")
    assert main([str(path), str(tmp_path / "out"), *PROCEDURAL, "--caption-column", "2"]) == 0
    assert [r.caption for r in read_manifest(tmp_path / "out")[1]] == [
        c.text for c in result.captions
    ]


@pytest.mark.parametrize(
    "content", ["", "\n  \n\t\n", "caption,label\n\n"], ids=["empty", "blank", "header-only"]
)
def test_a_file_without_captions_is_an_error(content, tmp_path, capsys):
    path = tmp_path / ("c.csv" if content.startswith("caption") else "c.txt")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataGenError, match="no captions"):
        load_captions(path)
    assert main([str(path), str(tmp_path / "out"), *PROCEDURAL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


def test_read_only_output_folder_is_one_line_naming_it(tmp_path):
    captions = tmp_path / "c.txt"
    captions.write_text("a cat\n", encoding="utf-8")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    command = [sys.executable, "-m", "data_gen", str(captions), str(locked / "out"), *PROCEDURAL]
    if os.geteuid() == 0:  # root ignores permission bits unless it gives up the capability to
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        ),
    )
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "not writable" in err and str(locked / "out") in err, err
    assert not (locked / "out").exists()


def test_headerless_labels_by_column_number(tmp_path):
    path = tmp_path / "labelled.tsv"
    path.write_text("3\ta three\n0\ta zero\n", encoding="utf-8")
    result = load_captions(path, caption_column="2", label_column="1")
    assert [(c.text, c.label) for c in result.captions] == [("a three", 3), ("a zero", 0)]
    with pytest.raises(DataGenError, match="columns are numbers from 1"):
        load_captions(path, caption_column="2", label_column="label")
    text = tmp_path / "plain.txt"
    text.write_text("a cat\n", encoding="utf-8")
    with pytest.raises(DataGenError, match=r"need a \.csv or \.tsv"):
        load_captions(text, caption_column="2")


def test_a_part_holds_its_captions_only_with_the_counts_and_digest_of_all(tmp_path):
    path = tmp_path / "c.tsv"
    rows = [
        f"caption {i % 7} {'x' * (i % 3)}\t{'ab'[i % 2]}" for i in range(40)
    ]  # duplicates, label conflicts
    path.write_text("caption\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    whole = load_captions(path)
    parts = [load_captions(path, part=(i, 3)) for i in range(3)]
    for i, part in enumerate(parts):
        assert part.captions == whole.captions[i::3]
        assert (part.digest, part.stats(), part.class_names) == (
            whole.digest,
            whole.stats(),
            whole.class_names,
        )
    assert whole.num_captions == len(whole.captions) == 21 and whole.duplicates == 19
    assert whole.label_conflicts > 0


def test_two_captions_with_one_id_are_an_error_naming_the_line(tmp_path, monkeypatch):
    import data_gen.captions

    path = tmp_path / "c.txt"
    path.write_text("first\nfirst\nsecond\n", encoding="utf-8")
    monkeypatch.setattr(
        data_gen.captions, "caption_id", lambda text: "00000000000000ab"
    )  # a forced collision
    with pytest.raises(
        DataGenError,
        match=r"c\.txt:3: caption id 00000000000000ab collides with a different caption",
    ):
        load_captions(path)


def test_data_gen_is_the_package_not_this_test_folder():
    """tests/data_gen has no __init__.py and the checkout comes first on sys.path (pyproject's
    pytest ``pythonpath``), so ``import data_gen`` is the generator, also in a fresh clone run
    with a venv that is not activated."""
    import data_gen

    assert Path(data_gen.__file__).resolve() == REPO / "data_gen" / "__init__.py"
    assert not (REPO / "tests" / "data_gen" / "__init__.py").exists()
