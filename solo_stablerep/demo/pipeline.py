"""The whole demo in one call: captions → images → pretraining per method and seed → probes →
report."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from solo_stablerep.demo.captions import write_captions
from solo_stablerep.demo.dataset import generate_images, write_per_image_manifest
from solo_stablerep.demo.digits import PROBES_TEXT, evaluate_backbone, load_real_digits
from solo_stablerep.demo.report import accuracy_text, margins, summarise, write_report
from solo_stablerep.demo.runs import (
    DEFAULT_METHODS,
    METHODS,
    RANDOM_FLOOR,
    DemoSize,
    default_config_dir,
    random_backbone,
    train_method,
)
from solo_stablerep.errors import DemoError

logger = logging.getLogger(__name__)


def check_options(size: DemoSize, methods, config_dir: Path) -> None:
    """Raises :class:`DemoError` (one line) for options the runs cannot honour, before any work."""

    if not (config_dir / "stablerep.yaml").is_file():
        raise DemoError(
            f"no stablerep.yaml in {config_dir}: pass --config-dir scripts/pretrain/synthetic"
        )
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DemoError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if size.crops_per_step % size.views or size.crops_per_step % 2:
        raise DemoError(
            f"crops per step {size.crops_per_step} must be a multiple of views {size.views} "
            "and of 2"
        )
    if size.views > size.images_per_caption:
        raise DemoError(f"views {size.views} > images per caption {size.images_per_caption}")


def save_run_config(
    configs_dir: Path, method: str, config_dir: Path, composed_yaml: str, overrides: list
) -> None:
    """A method's composed config and the ``solo-stablerep-pretrain`` command that reproduces it."""

    (configs_dir / f"{method}.yaml").write_text(composed_yaml)
    command = [
        "solo-stablerep-pretrain",
        f"--config-path {config_dir}",
        f"--config-name {method}.yaml",
        *overrides,
    ]
    (configs_dir / f"{method}.command.txt").write_text(" \\\n    ".join(command) + "\n")


def run_demo(
    output: Path,
    size: DemoSize,
    methods=DEFAULT_METHODS,
    seeds=(0,),
    config_dir: Path | None = None,
    workers: int = 0,
    extra_overrides=(),
    threads: int = 1,
) -> dict:
    """Runs the whole demo into ``output``; returns what ``results.json`` holds.

    ``config_dir`` defaults to :func:`~solo_stablerep.demo.runs.default_config_dir`.
    """

    import torch

    # Small convolutions on a few shared cores: OpenMP threads mostly wait on each other (measured
    # 8x slower with 2 threads than 1 on a busy 2-core machine); the data worker takes another core.
    torch.set_num_threads(threads)

    config_dir = config_dir or default_config_dir()
    check_options(size, methods, config_dir)
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    captions = output / "captions.csv"
    count = write_captions(captions, size.captions_per_class, seed=0)
    t = time.perf_counter()
    data_root = output / "data"
    generate_images(captions, data_root, size.images_per_caption, size.crop_size, seed=0)
    write_per_image_manifest(data_root)
    logger.info(
        "generated %d captions x %d images (%d px) in %.1f s -> %s",
        count,
        size.images_per_caption,
        size.crop_size,
        time.perf_counter() - t,
        data_root,
    )
    sheets = sorted((data_root / "contact_sheets").glob("*.png"))
    if sheets:
        shutil.copyfile(sheets[0], output / "contact_sheet.png")

    probe_data = load_real_digits(size.crop_size)
    logger.info(
        "real probe set: sklearn digits, %d train / %d test, at random sizes and places in %d px",
        len(probe_data.train_labels),
        len(probe_data.test_labels),
        size.crop_size,
    )

    configs_dir = output / "configs"
    configs_dir.mkdir(exist_ok=True)
    rows, curves = [], {m: {} for m in methods}
    results = {}
    for seed in seeds:
        run_root = output / "runs" / f"seed{seed}"
        backbone = random_backbone(size, config_dir, data_root, run_root / "random", seed)
        rows.append(
            {
                "method": RANDOM_FLOOR,
                "seed": seed,
                "train_seconds": 0.0,
                "images_seen": 0,
                **evaluate_backbone(backbone, probe_data),
            }
        )
        logger.info("seed %d %s: %s", seed, RANDOM_FLOOR, accuracy_text(rows[-1]))
        for method in methods:
            run_dir = run_root / method
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh CSV log for the loss curve
            backbone, row, curve, composed_yaml, overrides = train_method(
                method, size, config_dir, data_root, run_dir, seed, workers, extra_overrides
            )
            t = time.perf_counter()
            row.update(evaluate_backbone(backbone, probe_data))
            rows.append(row)
            curves[method][seed] = curve
            logger.info(
                "seed %d %s: %d steps, %s images in %.0f s; probes (%.0f s): %s",
                seed,
                method,
                row["steps"],
                f"{row['images_seen']:,}",
                row["train_seconds"],
                time.perf_counter() - t,
                accuracy_text(row),
            )
            if seed == seeds[0]:
                save_run_config(configs_dir, method, config_dir, composed_yaml, overrides)
        # after every seed, so that a long seed study stopped early keeps the seeds it finished
        results = {
            "size": asdict(size),
            "methods": list(methods),
            "seeds": list(seeds),
            "seeds_done": sorted({row["seed"] for row in rows}),
            "probe": PROBES_TEXT,
            "summary": summarise(rows, [RANDOM_FLOOR, *methods]),
            "margins": margins(rows) if "stablerep" in methods else {},
            "runs": rows,
            "loss_curves": {
                m: {str(s): c for s, c in per_seed.items()} for m, per_seed in curves.items()
            },
            "total_seconds": time.perf_counter() - started,
        }
        write_report(output, results, curves)
    logger.info(
        "done in %.0f s; results, plot, contact sheet and configs in %s",
        results["total_seconds"],
        output,
    )
    return results
