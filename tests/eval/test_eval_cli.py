"""``solo-stablerep-eval`` end to end: checkpoints trained here by the entry point (StableRep and
solo-learn's SimCLR) plus ``random:resnet18`` on digits, every output file and table cell, the
cache on a rerun and after the checkpoint changes; torchvision-layout data sets with a val split
and multi-label targets; one-line errors for bad input."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_checkpoint, write_dtd, write_voc2007
from helpers import (
    PRETRAIN_CONFIGS,
    console_script,
    crop_overrides,
    requires_solo,
    run_pretrain_command,
    write_image_folder,
)

from solo_stablerep.eval.cli import main

pytestmark = requires_solo
FAST = [
    "--weight-decays",
    "3",
    "--episodes",
    "10",
    "--workers",
    "0",
    "--no-progress",
    "--batch-size",
    "64",
]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [console_script("solo-stablerep-eval"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A StableRep and a SimCLR checkpoint, each from two steps of the entry point on tiny crops."""
    root = tmp_path_factory.mktemp("pretrain")
    images = write_image_folder(root / "images", num_classes=6, per_class=4)
    checkpoints = {}
    for method in ("stablerep", "simclr"):
        done = run_pretrain_command(
            [sys.executable, "-m", "solo_stablerep.pretrain"],
            PRETRAIN_CONFIGS / "custom",
            f"{method}.yaml",
            root,
            *crop_overrides(1),
            f"data.train_path={images}",
            "checkpoint.dir=trained_models",
            "+limit_train_batches=2",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        (checkpoints[method],) = (root / "trained_models" / method).rglob("*.ckpt")
    return checkpoints


@pytest.mark.slow
def test_cli_compares_checkpoints_on_digits_and_reuses_the_cache(trained, tmp_path):
    models = [trained["stablerep"], trained["simclr"], "random:resnet18"]
    cache = tmp_path / "cache"
    common = ["--datasets", "digits", "--cache-dir", cache, "--image-size", "16", *FAST]
    first = run_cli(*models, "--output", tmp_path / "first", *common)
    assert first.returncode == 0, first.stderr[-3000:]

    out = tmp_path / "first"
    assert sorted(p.name for p in out.iterdir()) == [
        "results.csv",
        "results.json",
        "results.md",
        "results.png",
    ]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "results.json").read_text())
    labels = [m["label"] for m in report["models"]]
    assert labels == ["stablerep-custom", "simclr-custom", "random:resnet18"]
    assert [m["method"] for m in report["models"]] == ["stablerep", "simclr", None]
    columns = ["digits linear", "digits kNN", "digits 5-way 1-shot", "digits 5-way 5-shot"]
    cells = {(r["model"], f"{r['dataset']} {r['probe']}"): r for r in report["results"]}
    assert set(cells) == {(m, c) for m in labels for c in columns}
    assert all(0 <= r["score"] <= 1 for r in report["results"])
    assert all(r["ci95"] > 0 for r in report["results"] if "shot" in r["probe"])
    assert all(
        len(r["details"]["val_scores"]) == 3 for r in report["results"] if r["probe"] == "linear"
    )
    assert report["cache"]["hits"] == 0 and report["cache"]["misses"] == 6  # 3 models x 2 splits

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {(r["model"], f"{r['dataset']} {r['probe']}") for r in rows} == set(
        cells
    )
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| model | " + " | ".join(columns) + " |"
    for label, line in zip(labels, table[2:5], strict=True):
        row = [cell.strip() for cell in line.strip("|").split("|")]
        assert row[0] == label and len(row) == 5
        assert all(float(cell.split(" ± ")[0]) >= 0 for cell in row[1:])  # a number in every cell
    assert first.stdout == (out / "results.md").read_text()  # the table, on stdout

    # a rerun reads every feature from the cache and gives the same numbers
    second = run_cli(*models, "--output", tmp_path / "second", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "second" / "results.json").read_text())
    assert again["cache"] == {"dir": str(cache), "hits": 6, "misses": 0}
    assert [r["score"] for r in again["results"]] == [r["score"] for r in report["results"]]

    # a changed checkpoint is a new model: its features are extracted again, the others' are not
    state = torch.load(trained["simclr"], weights_only=True)
    state["state_dict"]["backbone.conv1.weight"] *= 1.5
    torch.save(state, trained["simclr"])
    third = run_cli(*models, "--output", tmp_path / "third", "--probes", "knn", *common)
    assert third.returncode == 0, third.stderr[-3000:]
    changed = json.loads((tmp_path / "third" / "results.json").read_text())
    assert changed["cache"]["hits"] == 4 and changed["cache"]["misses"] == 2
    assert {r["probe"] for r in changed["results"]} == {"kNN"}


@pytest.mark.slow
def test_cli_under_torchrun_shares_the_extraction_and_rank_0_reports(tmp_path):
    """Two CPU ranks (gloo) extract the features one process would, into the same cache entries;
    rank 0 alone runs the probe and writes the outputs. (NCCL on GPUs: not tested, no GPU here.)"""
    common = ["random:resnet18", "--datasets", "digits", "--image-size", "16", "--probes", "knn"]
    common += [*FAST, "--device", "cpu"]
    alone = run_cli(*common, "--output", tmp_path / "alone", "--cache-dir", tmp_path / "c1")
    assert alone.returncode == 0, alone.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    two = subprocess.run(
        [*torchrun, "2", "-m", "solo_stablerep.eval", *map(str, common)]
        + ["--output", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "alone").iterdir()
    )
    assert two.stdout.count("| random:resnet18 |") == 1  # one table: rank 0's
    entries = sorted(p.name for p in (tmp_path / "c2").iterdir())
    assert entries == sorted(p.name for p in (tmp_path / "c1").iterdir())  # same keys, no leftovers
    for name in entries:
        if name.endswith(".features.npy"):  # batch boundaries differ: float32 rounding only
            np.testing.assert_allclose(
                np.load(tmp_path / "c2" / name), np.load(tmp_path / "c1" / name), atol=1e-5
            )
    scores = [
        json.loads((tmp_path / run / "results.json").read_text())["results"][0]["score"]
        for run in ("alone", "two")
    ]
    assert abs(scores[0] - scores[1]) <= 1 / 899  # one test item at most, on a tie


@pytest.mark.slow
def test_python_dash_m_is_the_same_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "solo_stablerep.eval", "--help"], capture_output=True, text=True
    )
    assert (
        done.returncode == 0
        and "solo-stablerep-eval" in done.stdout
        and "--weight-decays" in done.stdout
    )


def test_val_split_and_multilabel_sets_from_torchvision_layouts(tmp_path, capsys):
    dtd, voc = (
        write_dtd(tmp_path / "dtd", per_split=(6, 3, 16)),
        write_voc2007(tmp_path / "voc", per_split=8),
    )
    rc = main(
        [
            "random:resnet18",
            "--datasets",
            f"dtd:{dtd}",
            f"voc2007:{voc}",
            "--output",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--image-size",
            "16",
            "--shots",
            "1",
            "--ways",
            "3",
            *FAST,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["datasets"][0]["sizes"] == {"train": 18, "val": 9, "test": 48}
    assert report["cache"]["misses"] == 6  # train, val, test of each
    by_probe = {(r["dataset"], r["probe"]): r for r in report["results"]}
    # VOC is multi-label: the linear probe only (11-point mAP), no kNN, no episodes
    assert set(by_probe) == {
        ("dtd", "linear"),
        ("dtd", "kNN"),
        ("dtd", "3-way 1-shot"),
        ("voc2007", "linear"),
    }
    assert by_probe[("voc2007", "linear")]["metric"] == "map11"
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| random:resnet18 |" in table and "voc2007 linear" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["random:resnet18", "--datasets", "mnist"],
            "unknown data set 'mnist': known ones are digits,",
        ),
        (["no/such.ckpt", "--datasets", "digits"], "no/such.ckpt: no such checkpoint file"),
        (["random:alexnet", "--datasets", "digits"], "unknown backbone 'alexnet'"),
        (
            ["random:resnet18", "--datasets", "digits", "--weight-decays", "0"],
            "argument --weight-decays: got 0",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert (
        main([*argv, "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("solo-stablerep-eval: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_export_command(tmp_path, checkpoint, capsys):
    assert main(["export", str(checkpoint), str(tmp_path / "model.safetensors")]) == 0
    assert "timm.create_model('resnet18', pretrained=True, num_classes=0" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").stat().st_size > 1_000_000


@pytest.mark.parametrize("workers", [0, 1])  # 1: the error is raised in a loader worker process
def test_corrupt_image_is_named_and_leaves_no_cache_entry(tmp_path, capsys, workers):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "set" / split, num_classes=2, per_class=2)
    bad = tmp_path / "set" / "test" / "class1" / "1.png"
    bad.write_bytes(b"\x89PNG truncated")
    argv = [
        "random:resnet18",
        "--datasets",
        f"imagefolder:{tmp_path / 'set'}",
        "--output",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--image-size",
        "16",
        *FAST,
        "--workers",
        str(workers),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("solo-stablerep-eval: error: cannot decode image ") and str(bad) in err
    assert "\n" not in err
    # the train split was cached; the test split's entry was never completed
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    assert not list((tmp_path / "cache").glob("*.pending"))


def test_vit_resolution_is_the_one_it_was_built_for(tmp_path, capsys):
    """A random ViT is built for --image-size; a checkpoint's ViT refuses another size in one
    line (its position embeddings are fixed)."""
    for split in ("train", "test"):
        write_image_folder(tmp_path / "set" / split, num_classes=2, per_class=6, size=24)
    common = [
        "--datasets",
        f"imagefolder:{tmp_path / 'set'}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--probes",
        "knn",
        *FAST,
    ]
    assert (
        main(["random:vit_tiny", "--output", str(tmp_path / "out"), "--image-size", "32", *common])
        == 0
    )
    vit = write_checkpoint(
        tmp_path / "run", backbone="vit_tiny", kwargs={"img_size": 32}, method="stablerep"
    )
    assert main([str(vit), "--output", str(tmp_path / "out2"), "--image-size", "64", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith("its vit_tiny was built for 32 px images: use --image-size 32")
        and "\n" not in err
    )
