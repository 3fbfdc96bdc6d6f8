"""The demo (stablerep-demo), its probes on real digits, the paper-scale configs and
bench/run_all.py."""

import importlib.util
import json
import math
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, compose_parsed_cfg, make_manifest_dataset, requires_solo

PAPER_CONFIGS = REPO / "scripts" / "pretrain" / "synthetic-paper"


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- captions and evaluation (no training)


def test_captions_name_their_label_digit_and_are_distinct(tmp_path):
    import csv

    from data_gen.procedural import NUMBER_WORDS, parse
    from solo_stablerep.demo.captions import write_captions

    count = write_captions(tmp_path / "captions.csv", captions_per_class=7, seed=0)
    with (tmp_path / "captions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert count == len(rows) == 70
    assert len({row["caption"] for row in rows}) == 70
    for row in rows:
        things = parse(row["caption"]).things
        # the renderer draws exactly one object: the labelled digit
        assert [thing.digit for thing in things] == [int(row["label"])], row["caption"]
    assert sorted(int(row["label"]) for row in rows) == [d for d in range(10) for _ in range(7)]
    # every digit gets the same 7 descriptions: no word tells the digits apart but the digit's name
    templates = {}
    for row in rows:
        digit = int(row["label"])
        template = (
            row["caption"]
            .replace(f"number {NUMBER_WORDS[digit]}", "NAME")
            .replace(f"digit {digit}", "NAME")
        )
        templates.setdefault(template, set()).add(digit)
    assert len(templates) == 7 and all(digits == set(range(10)) for digits in templates.values())


def test_real_digits_are_placed_normalised_stratified_and_reproducible():
    from solo_stablerep.demo.digits import IMAGENET_MEAN, IMAGENET_STD, load_real_digits

    data = load_real_digits(image_size=24)
    assert data.train_images.shape[1:] == (3, 24, 24)
    assert len(data.train_labels) + len(data.test_labels) == 1797
    # stratified halves: every class split evenly between train and test
    assert np.abs(np.bincount(data.train_labels) - np.bincount(data.test_labels)).max() <= 1
    # background pixels (no ink, value 0) land on -mean/std of each channel
    corner = data.train_images[:, :, 0, 0]
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(corner.median(dim=0).values, expected, atol=1e-4)
    # the same images for every backbone and every run
    assert torch.equal(load_real_digits(image_size=24).test_images, data.test_images)


def test_each_scan_is_placed_in_a_square_of_its_own_size_and_place():
    from solo_stablerep.demo.digits import place_digits

    frames = place_digits(torch.ones(60, 1, 8, 8), image_size=32, min_fraction=0.625, seed=0)
    boxes = []
    for frame in frames[:, 0]:
        rows, cols = torch.nonzero(frame > 0.5, as_tuple=True)
        top, left, height, width = (
            rows.min(),
            cols.min(),
            rows.max() - rows.min() + 1,
            cols.max() - cols.min() + 1,
        )
        assert height == width and 20 <= height <= 32
        square = frame[top : top + height, left : left + width]
        assert torch.allclose(square, torch.ones_like(square))
        assert frame.sum().item() == pytest.approx(height * width, rel=1e-4)  # nothing outside it
        boxes.append((int(top), int(left), int(height)))
    assert (
        len({side for _, _, side in boxes}) > 5
        and len({(top, left) for top, left, _ in boxes}) > 10
    )
    assert torch.equal(place_digits(torch.ones(60, 1, 8, 8), 32, 0.625, seed=0), frames)


def test_probes_of_a_fixed_backbone_are_above_chance_and_reproducible():
    # no training: a fixed pooling "backbone" gives the same features on every machine, so the
    # accuracies only move with float rounding; measured kNN 0.765, linear 0.585, 5-shot 0.477
    # (chance 0.1, 0.1, 0.2): the bounds below are for a broken pipeline, not a quality claim
    from solo_stablerep.demo.digits import ACCURACIES, evaluate_backbone, load_real_digits

    data = load_real_digits(image_size=16)
    pooling = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten())
    scores = evaluate_backbone(pooling, data)
    assert set(scores) == {key for key, _ in ACCURACIES}
    assert scores["knn_acc"] > 0.4 and scores["linear_acc"] > 0.3 and scores["few_shot_acc"] > 0.35
    assert evaluate_backbone(pooling, data) == scores


def _rows(values):
    """Result rows of (method, seed, accuracy): the same accuracy for every probe."""
    return [
        {
            "method": m,
            "seed": s,
            "knn_acc": a,
            "linear_acc": a,
            "few_shot_acc": a / 2,
            "train_seconds": 10.0,
            "images_seen": 640,
        }
        for m, s, a in values
    ]


def test_summary_and_table_report_mean_spread_and_minimum():
    from solo_stablerep.demo.report import markdown_table, summarise

    (entry,) = summarise(
        _rows([("stablerep", 0, 0.8), ("stablerep", 1, 0.9)]), ["stablerep", "simclr"]
    )
    assert entry["knn_acc"] == pytest.approx(0.85) and entry["knn_acc_min"] == 0.8
    assert entry["knn_acc_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    table = markdown_table([entry]).splitlines()
    assert table[0].startswith("| method | kNN acc | linear acc | 5-shot acc |")
    assert table[2] == (
        "| stablerep | 0.850 ± 0.071 (min 0.800) | 0.850 ± 0.071 (min 0.800) "
        "| 0.425 ± 0.035 (min 0.400) | 10 | 640 |"
    )


def test_margins_compare_stablerep_with_each_opponent_seed_by_seed():
    from solo_stablerep.demo.report import margins, margins_table

    rows = _rows(
        [
            ("random init", 0, 0.5),
            ("stablerep", 0, 0.6),
            ("simclr", 0, 0.65),
            ("random init", 1, 0.4),
            ("stablerep", 1, 0.7),
            ("simclr", 1, 0.5),
            ("random init", 2, 0.45),
        ]
    )  # seed 2 stopped before training: left out
    result = margins(rows)
    floor, simclr = result["random init"]["knn_acc"], result["simclr"]["knn_acc"]
    assert floor["per_seed"] == pytest.approx({0: 0.1, 1: 0.3})
    assert (floor["wins"], floor["seeds"], floor["min"]) == (2, 2, pytest.approx(0.1))
    assert (simclr["wins"], simclr["min"], simclr["mean"]) == (
        1,
        pytest.approx(-0.05),
        pytest.approx(0.075),
    )
    assert "| simclr | ahead at 1/2 seeds, min -0.050, mean +0.075 |" in margins_table(result)


def test_plot_draws_every_seed_and_the_loss_curves(tmp_path):
    from solo_stablerep.demo.report import plot

    rows = _rows(
        [
            ("random init", 0, 0.5),
            ("stablerep", 0, 0.6),
            ("random init", 1, 0.4),
            ("stablerep", 1, 0.7),
        ]
    )
    plot(
        rows,
        {"stablerep": {0: [(0, 4.0), (1, 3.5)], 1: [(0, 4.1), (1, 3.0)]}},
        tmp_path / "results.png",
    )
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the demo's configs: same crops per step, steps and effective lr for every method


@requires_solo
@pytest.mark.parametrize("method", ["stablerep", "simclr", "byol", "supcon", "synclr"])
def test_demo_overrides_give_every_method_the_same_budget(tmp_path, method):
    from solo_stablerep.demo.dataset import write_per_image_manifest
    from solo_stablerep.demo.runs import SIZES_PRESETS, default_config_dir, method_overrides

    size = SIZES_PRESETS["default"]
    make_manifest_dataset(
        tmp_path / "ds",
        10 * size.captions_per_class,
        size.images_per_caption,
        class_names=[str(d) for d in range(10)],
    )
    write_per_image_manifest(tmp_path / "ds")
    overrides = method_overrides(method, size, tmp_path / "ds", tmp_path / "run", seed=3, workers=0)
    cfg = compose_parsed_cfg(default_config_dir(), f"{method}.yaml", overrides)
    assert cfg.optimizer.batch_size * cfg.data.num_large_crops == size.crops_per_step
    assert cfg.optimizer.lr == pytest.approx(size.lr)  # after solo-learn's batch-size scaling
    assert cfg.max_steps == size.steps
    assert cfg.backbone.name == "resnet18" and cfg.augmentations[0].crop_size == size.crop_size
    assert cfg.seed == 3
    # StableRep's and SynCLR's items are captions (views images each); the others' are images (2
    # crops each)
    from solo_stablerep.data.index import CaptionIndex

    items = len(CaptionIndex.from_manifest(cfg.data.train_path))
    if method in ("stablerep", "synclr"):
        assert (items, cfg.data.synthetic.n_img) == (10 * size.captions_per_class, size.views)
    else:
        assert items == 10 * size.captions_per_class * size.images_per_caption
        assert cfg.data.synthetic.n_img == 1 and cfg.data.num_large_crops == 2
    assert cfg.max_epochs * (items // cfg.optimizer.batch_size) >= size.steps
    # the same crops per backbone call (and so per BatchNorm batch) as SimCLR's: StableRep and
    # SynCLR forward their views in groups of half the global ones (SynCLR's local crops too)
    per_call = cfg.optimizer.batch_size * cfg.method_kwargs.get("views_per_backbone_call", 1)
    assert per_call == size.crops_per_step // 2
    # the same augmentations for every method: whole digits, never mirrored, at the probe's 8 px
    assert (
        cfg.augmentations[0].horizontal_flip.prob == 0
        and cfg.augmentations[0].rrc.crop_min_scale == 0.3
    )
    assert cfg.data.synthetic.downsample.prob == 1.0 and list(
        cfg.data.synthetic.downsample.sizes
    ) == [8]


@requires_solo
@pytest.mark.parametrize("settings", ["short-run", "config"])
def test_synclr_runs_the_short_run_settings_unless_asked_for_the_configs(tmp_path, settings):
    """The demo's SynCLR (docs/synclr.md#in-the-demo): BN heads, no predictor, no local crops, a
    teacher that follows within ~10 steps; ``config``: synclr.yaml's own (the paper's)."""
    from dataclasses import replace

    from solo_stablerep.demo.runs import SIZES_PRESETS, default_config_dir, method_overrides

    size = replace(SIZES_PRESETS["default"], synclr_settings=settings)
    make_manifest_dataset(tmp_path / "ds", 10, size.images_per_caption)
    overrides = method_overrides("synclr", size, tmp_path / "ds", tmp_path / "run", 0, 0)
    cfg = compose_parsed_cfg(default_config_dir(), "synclr.yaml", overrides)
    kwargs = cfg.method_kwargs
    short = settings == "short-run"
    assert kwargs.get("head_norm", "ln") == ("bn" if short else "ln")
    assert kwargs.get("pred_num_layers", 2) == (0 if short else 2)
    assert (kwargs.num_local_crops, cfg.data.num_small_crops) == ((0, 0) if short else (4, 32))
    assert cfg.momentum.base_tau == (0.9 if short else 0.994)
    assert kwargs.temperature == 0.08  # the paper's, in both


def test_a_set_override_the_config_lacks_is_one_line():
    from solo_stablerep.demo.runs import compose, default_config_dir
    from solo_stablerep.errors import DemoError

    with pytest.raises(DemoError) as caught:
        compose(default_config_dir(), "synclr", ["method_kwargs.head_nrom=bn"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("synclr: Could not override 'method_kwargs.head_nrom'")
    assert "+method_kwargs.head_nrom=bn" in message


def test_per_image_manifest_lists_every_image_once_as_its_own_item(tmp_path):
    from solo_stablerep.data.manifest import read_manifest
    from solo_stablerep.demo.dataset import write_per_image_manifest

    make_manifest_dataset(tmp_path / "ds", 3, 4, class_names=["a", "b", "c"])
    header, captions = read_manifest(tmp_path / "ds")
    root = write_per_image_manifest(tmp_path / "ds")
    per_header, items = read_manifest(root)
    assert per_header["class_names"] == header["class_names"] and len(items) == 12
    assert sorted((i.caption, i.label, i.images[0]) for i in items) == sorted(
        (c.caption, c.label, image) for c in captions for image in c.images
    )
    # the same files, not copies
    assert all(
        (root / i.images[0]).resolve() == (tmp_path / "ds" / i.images[0]).resolve() for i in items
    )
    assert write_per_image_manifest(tmp_path / "ds") == root  # a rerun replaces it


# ---- paper-scale configs: compose and build (ViT-B/16), no training


@requires_solo
@pytest.mark.parametrize("method, images_per_item", [("stablerep", 6), ("simclr", 2)])
def test_paper_scale_configs_build_vit_base(tmp_path, method, images_per_item):
    from solo.methods import METHODS

    make_manifest_dataset(tmp_path / "ds", 4, 10, class_names=["a", "b"])
    cfg = compose_parsed_cfg(
        PAPER_CONFIGS, f"{method}.yaml", [f"data.train_path={tmp_path / 'ds'}"]
    )

    gpus = len(cfg.devices) * cfg.num_nodes
    images_per_step = cfg.optimizer.batch_size * cfg.data.num_large_crops * gpus
    assert (gpus, cfg.strategy, cfg.sync_batchnorm) == (32, "ddp", True)
    assert cfg.data.format == "dali" and cfg.data.num_large_crops == images_per_item
    assert images_per_step == 8256  # the authors' command: 43 captions x 6 images x 32 GPUs
    # the authors' lr for it (tests/test_paper_recipe.py checks the formula)
    assert cfg.optimizer.lr == pytest.approx(3.225e-3)
    assert list(cfg.optimizer.kwargs.betas) == [0.9, 0.98] and cfg.optimizer.weight_decay == 0.1
    assert cfg.augmentations[0].crop_size == 224
    if method == "stablerep":
        assert cfg.data.synthetic.downsample.prob == 0.05
        assert (cfg.method_kwargs.proj_hidden_dim, cfg.method_kwargs.proj_output_dim) == (4096, 256)

    model = METHODS[method](cfg)
    assert cfg.backbone.name == "vit_base" and model.features_dim == 768
    assert model.backbone.patch_embed.patch_size == (16, 16)
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 768)


@requires_solo
def test_paper_scale_config_refuses_a_missing_train_path():

    with pytest.raises(ValueError, match="data.train_path is not set"):
        compose_parsed_cfg(PAPER_CONFIGS, "stablerep.yaml", [])


# ---- the whole demo, tiny


@pytest.mark.slow
@requires_solo
def test_demo_runs_end_to_end_and_writes_its_table_plot_and_configs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "solo_stablerep.demo",
            "--size",
            "tiny",
            "--seeds",
            "0",
            "--methods",  # the default ones, named as docs/demo.md's seed study names its own
            "stablerep",
            "simclr",
            "supcon",
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    methods = ["random init", "stablerep", "simclr", "supcon"]
    summary = {entry["method"]: entry for entry in results["summary"]}
    assert list(summary) == methods and results["seeds_done"] == [0]
    # the pipeline, not a verdict: the tiny size was not studied over seeds, and one trajectory's
    # ordering of the methods is a draw (docs/demo.md has the default size's seed study).
    # Chance is 0.1 for kNN and linear (10 digits), 0.2 for 5-way few-shot.
    for entry in summary.values():
        for key, chance in (("knn_acc", 0.1), ("linear_acc", 0.1), ("few_shot_acc", 0.2)):
            assert math.isfinite(entry[key]) and chance < entry[key] <= 1.0, (entry["method"], key)
    assert (
        summary["random init"]["train_seconds"] == 0 and summary["random init"]["images_seen"] == 0
    )
    for method in methods[1:]:
        assert (
            summary[method]["images_seen"]
            == results["size"]["steps"] * results["size"]["crops_per_step"]
        )
        curve = results["loss_curves"][method]["0"]
        assert len(curve) > 1 and all(math.isfinite(loss) for _, loss in curve)
        assert (out / "configs" / f"{method}.yaml").read_text().count(f"method: {method}") == 1
    per_seed = results["margins"]["simclr"]["knn_acc"]["per_seed"]
    assert set(results["margins"]) == {"random init", "simclr"} and list(per_seed) == ["0"]
    table = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == (1 + 4) + (
        1 + 2
    )  # 2 tables
    assert table.split("\n| method")[1].split("\n\n")[0] in proc.stdout  # the table is printed too
    for name in ("results.png", "contact_sheet.png", "captions.csv", "data/manifest.jsonl"):
        assert (out / name).stat().st_size > 0
    # the console: progress with step, loss (and the health signal of the methods that log one)
    # and time left for every method, and no warning a user cannot act on
    # (cli.UNACTIONABLE_WARNINGS)
    steps = results["size"]["steps"]
    for method in methods[1:]:
        health = ", embedding std 0[.][0-9]+" if method == "stablerep" else ""
        assert re.search(
            rf"seed 0 {method}: step {steps}/{steps}, loss [0-9.]+{health}, \d+ s, ~0 s left",
            proc.stderr,
        ), method
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr.lower(), proc.stderr[-3000:]
    # the command that reproduces each run, pasteable into a shell (paths quoted for Hydra)
    command = (out / "configs" / "stablerep.command.txt").read_text().replace("\\\n", " ")
    words = shlex.split(command)
    assert words[0] == "solo-stablerep-pretrain" and f"data.train_path='{out / 'data'}'" in words

    # the same folder with other options: refused before any work, the results kept
    report = (out / "results.json").read_text()
    other = subprocess.run(
        [sys.executable, "-m", "solo_stablerep.demo", *proc.args[3:], "--seeds", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert other.returncode == 2, other.stderr[-3000:]
    assert "holds the results of a run with other options (seeds: [0] -> [1])" in other.stderr
    assert (out / "results.json").read_text() == report


# ---- bench/run_all.py


def test_bench_runner_reports_ratios_goals_and_failures(tmp_path):
    run_all = load_run_all()
    good = tmp_path / "bench_good.py"
    good.write_text(
        'print("warm-up")\nprint("RATIO speed_vs_ref 0.80 (goal <= 1.02)")\n'
        'print("RATIO thr 0.9 (goal >= 0.95)")\n'
    )
    bad = tmp_path / "bench_bad.py"
    bad.write_text(
        'print("RATIO partial 1.0 (goal <= 2)")\nraise SystemExit("bench_bad: error: no data")\n'
    )
    silent = tmp_path / "bench_silent.py"
    silent.write_text('print("nothing to report")\n')

    results = [run_all.run_script(script, timeout=60) for script in (good, bad, silent)]
    assert results[0]["status"] == "ok"
    assert [(r["name"], r["value"], r["met"]) for r in results[0]["ratios"]] == [
        ("speed_vs_ref", 0.8, True),
        ("thr", 0.9, False),
    ]
    assert results[1]["status"] == "failed (exit 1)" and "no data" in results[1]["detail"]
    assert results[2]["status"] == "no RATIO line"
    table = run_all.table(results)
    assert "bench_bad.py" in table and "failed (exit 1)" in table and "NO" in table
    assert "bench_silent.py" in table


def test_bench_runner_discovers_every_benchmark_but_itself():
    names = [p.name for p in load_run_all().discover()]
    assert "run_all.py" not in names
    assert names == sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name != "run_all.py")


def test_cli_output_hides_lightnings_info_banners():
    # Lightning prints "Seed set to 0", "GPU available" ... at INFO through a handler of its own;
    # the demo's progress lines would drown in them
    script = (
        "import logging, lightning.pytorch as pl; "
        "from solo_stablerep.demo.cli import _configure_output; "
        "_configure_output(); pl.seed_everything(0); "
        "logging.getLogger('solo_stablerep.demo.pipeline').info('progress line')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "progress line" in result.stderr
    assert "Seed set" not in result.stderr


def test_cli_output_hides_only_the_warnings_a_user_cannot_act_on():
    script = (
        "import warnings; from solo_stablerep.demo.cli import _configure_output; "
        "_configure_output(); import logging; "
        "logging.getLogger('root').warning('Using scheduler_interval=step might generate "
        "issues when resuming a checkpoint.'); "
        "warnings.warn('You defined a `validation_step` but have no `val_dataloader`. "
        "Skipping val loop.'); "
        "warnings.warn(\"'pin_memory' argument is set as true but no accelerator is found\"); "
        "warnings.warn('a warning the user can act on')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "a warning the user can act on" in result.stderr
    for hidden in ("scheduler_interval", "validation_step", "pin_memory"):
        assert hidden not in result.stderr
