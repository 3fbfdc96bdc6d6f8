"""``solo-stablerep-eval`` and ``export`` given bad input (docs/data-faults.md): one line naming it,
exit code 2, before any feature is extracted where it can be checked up front; earlier results
never replaced without ``--overwrite``; a cache folder shared by two evaluations."""

import json
import subprocess

import pytest
import torch
from conftest import write_dtd, write_voc2007
from helpers import console_script, requires_solo, write_image_folder

from solo_stablerep.eval.cli import main

pytestmark = requires_solo
FAST = ["--weight-decays", "3", "--episodes", "10", "--workers", "0", "--no-progress"]
PREFIX = "solo-stablerep-eval: error: "


def image_set(root, per_class=4, num_classes=2):
    for split in ("train", "test"):
        write_image_folder(root / split, num_classes=num_classes, per_class=per_class, size=16)
    return root


def evaluate(tmp_path, *args, output="out", dataset=None, capsys=None):
    """``main`` on random:resnet18 and a tiny image folder (or ``dataset``); returns (exit code,
    stderr)."""
    dataset = dataset or f"imagefolder:{image_set(tmp_path / 'set')}"
    argv = ["random:resnet18", "--datasets", dataset, "--image-size", "16", *FAST]
    argv += ["--output", str(tmp_path / output), "--cache-dir", str(tmp_path / "cache"), *args]
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip() if capsys else ""


def assert_one_line(err, *parts):
    assert err.startswith(PREFIX) and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("--image-size", "0", ">= 1"),  # was: ran at 224 px, reported image_size 0
        ("--image-size", "-5", ">= 1"),
        ("--image-size", "abc", "not a whole number"),
        ("--batch-size", "0", ">= 1"),
        ("--workers", "-1", ">= 0"),
        ("--weight-decays", "0", ">= 1"),
        ("--knn-k", "0", ">= 1"),  # was: chance accuracy, reported as a result
        ("--knn-temperature", "0", "> 0"),
        ("--knn-temperature", "nan", "> 0"),
        ("--ways", "1", ">= 2"),
        ("--shots", "0", ">= 1"),
        ("--episodes", "1", ">= 2"),
        ("--queries", "0", ">= 1"),
        ("--seed", "-1", ">= 0"),
    ],
)
def test_numeric_options_out_of_range_are_one_line_before_any_work(
    tmp_path, capsys, option, value, allowed
):
    code, err = evaluate(tmp_path, option, value, capsys=capsys)
    assert code == 2
    assert_one_line(err, f"argument {option}", value, allowed)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_option_errors_through_the_console_script_are_one_line_without_usage(tmp_path):
    done = subprocess.run(
        [console_script("solo-stablerep-eval"), "random:resnet18", "--datasets", "digits"]
        + ["--output", str(tmp_path / "out"), "--knn-k", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line(done.stderr.strip(), "argument --knn-k: got 0")


@pytest.mark.parametrize("under", [False, True])
@pytest.mark.parametrize("option", ["--output", "--cache-dir"])
def test_an_output_or_cache_folder_that_is_a_file_is_one_line_before_any_work(
    tmp_path, capsys, option, under
):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    path = a_file / "sub" if under else a_file
    argv = ["random:resnet18", "--datasets", "digits", "--image-size", "16", *FAST]
    argv += ["--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    argv += [option, str(path)]  # the later one wins
    assert main(argv) == 2
    assert_one_line(capsys.readouterr().err.strip(), f"{option} {path}", f"{a_file} is a file")
    assert a_file.read_text() == "mine"
    assert not (tmp_path / "cache").exists()  # nothing extracted


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "--device foo: not a device torch knows"),
        pytest.param(
            "cuda",
            "--device cuda: not usable here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_a_device_that_is_not_here_is_one_line(tmp_path, capsys, device, message):
    code, err = evaluate(tmp_path, "--device", device, capsys=capsys)
    assert code == 2
    assert_one_line(err, message)
    assert not (tmp_path / "cache").exists()


def test_earlier_results_are_kept_unless_overwrite(tmp_path, capsys):
    code, err = evaluate(tmp_path, "--probes", "knn", capsys=capsys)
    assert code == 0, err
    report = tmp_path / "out" / "results.json"
    first = report.read_text()
    assert json.loads(first)["results"][0]["details"]["k"] == 20

    # the same folder, other arguments: refused up front, the first results untouched
    code, err = evaluate(tmp_path, "--probes", "knn", "--knn-k", "3", capsys=capsys)
    assert code == 2
    assert_one_line(err, "--output", "holds the results of an earlier run", "--overwrite")
    assert report.read_text() == first

    code, err = evaluate(tmp_path, "--probes", "knn", "--knn-k", "3", "--overwrite", capsys=capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["results"][0]["details"]["k"] == 3


def test_no_probe_that_can_run_is_one_line_before_any_work(tmp_path, capsys):
    # 4 test images per class: 1-shot episodes with 15 queries need 16
    code, err = evaluate(tmp_path, "--probes", "fewshot", "--shots", "1", capsys=capsys)
    assert code == 2
    assert_one_line(err, "no probe can run", "1-shot: episodes need 2 test classes of >= 16")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()

    voc = write_voc2007(tmp_path / "voc", per_split=2)
    code, err = evaluate(tmp_path, "--probes", "knn", dataset=f"voc2007:{voc}", capsys=capsys)
    assert code == 2
    assert_one_line(err, "no probe can run", "voc2007 knn: multi-label")


def test_probes_that_cannot_run_are_listed_and_the_others_reported(tmp_path, capsys):
    """Was: 'max() arg is an empty sequence' from the plot, after the other files were written."""
    code, err = evaluate(
        tmp_path, "--probes", "knn", "fewshot", "--shots", "1", "--queries", "3", "--shots", "9",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out"
    report = json.loads((out / "results.json").read_text())
    assert [r["probe"] for r in report["results"]] == ["kNN"]
    assert len(report["skipped"]) == 1 and report["skipped"][0].startswith("imagefolder:set 9-shot")
    assert "Skipped: imagefolder:set 9-shot" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_a_dtd_split_line_without_its_class_names_the_file_and_line(tmp_path, capsys):
    root = write_dtd(tmp_path / "dtd")
    labels = root / "dtd" / "dtd" / "labels" / "val1.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], lines[1].split("/")[1], *lines[2:]]) + "\n")
    code, err = evaluate(tmp_path, dataset=f"dtd:{root}", capsys=capsys)
    assert code == 2
    assert_one_line(err, f"{labels}:2: ", "is not CLASS/IMAGE")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda xml: xml[: len(xml) // 2], "not a VOC annotation"),  # cut short: not XML
        (lambda xml: xml.replace("<name>cat</name>", ""), "not a VOC annotation (no 'name')"),
        (lambda xml: xml.replace("<name>cat</name>", "<name>kat</name>"), "'kat' is none of"),
    ],
)
def test_a_malformed_voc_annotation_names_the_file(tmp_path, capsys, damage, reason):
    root = write_voc2007(tmp_path / "voc", per_split=2)
    annotation = root / "VOCdevkit" / "VOC2007" / "Annotations" / "val001.xml"
    annotation.write_text(damage(annotation.read_text()))
    code, err = evaluate(tmp_path, "--probes", "linear", dataset=f"voc2007:{root}", capsys=capsys)
    assert code == 2
    assert_one_line(err, str(annotation), reason)


@pytest.mark.parametrize("out", ["a_folder", "a_file/model.safetensors", "existing.safetensors"])
def test_export_to_a_folder_under_a_file_or_onto_a_file_is_one_line(
    tmp_path, capsys, checkpoint, out
):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "existing.safetensors").write_text("an earlier export")
    assert main(["export", str(checkpoint), str(tmp_path / out)]) == 2
    expected = {
        "a_folder": "is a folder",
        "a_file/model.safetensors": f"{tmp_path / 'a_file'} is a file",
        "existing.safetensors": "exists; pass --overwrite",
    }[out]
    assert_one_line(capsys.readouterr().err.strip(), f"OUT {tmp_path / out}", expected)
    assert (tmp_path / "a_file").read_text() == "mine"
    assert (tmp_path / "existing.safetensors").read_text() == "an earlier export"
    if out == "existing.safetensors":
        assert main(["export", str(checkpoint), str(tmp_path / out), "--overwrite"]) == 0
        assert (tmp_path / out).stat().st_size > 1_000_000


@pytest.mark.slow
def test_two_evaluations_sharing_a_cache_folder_write_each_entry_once(tmp_path):
    """Started together, both extract the same features: one writes each entry while the other
    waits for its lock, then reads it. Both succeed with the same numbers and a whole cache."""
    data = image_set(tmp_path / "set", per_class=16)
    argv = [console_script("solo-stablerep-eval"), "random:resnet18", "--image-size", "16"]
    argv += ["--datasets", f"imagefolder:{data}", "--probes", "knn", *FAST]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    runs = [
        subprocess.Popen(
            [*argv, "--output", str(tmp_path / f"out{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    reports = [json.loads((tmp_path / f"out{i}" / "results.json").read_text()) for i in range(2)]
    assert reports[0]["results"] == reports[1]["results"]
    # every split extracted once in all: the second process read what the first wrote
    assert sum(r["cache"]["misses"] for r in reports) == 2
    assert sum(r["cache"]["hits"] for r in reports) == 2
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len([n for n in names if n.endswith(".json")]) == 2
    assert not [n for n in names if n.endswith((".pending", ".tmp"))]
