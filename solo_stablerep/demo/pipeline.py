"""The whole demo in one call: captions → images → pretraining per method and seed → probes →
report."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from solo_stablerep.console import check_output_folder
from solo_stablerep.demo.captions import write_captions
from solo_stablerep.demo.dataset import generate_images, write_per_image_manifest
from solo_stablerep.demo.digits import PROBES_TEXT, evaluate_backbone, load_real_digits
from solo_stablerep.demo.report import accuracy_text, margins, summarise, write_report
from solo_stablerep.demo.runs import (
    DEFAULT_METHODS,
    METHODS,
    RANDOM_FLOOR,
    SYNCLR_SETTINGS,
    DemoSize,
    check_set_types,
    compose,
    default_config_dir,
    method_overrides,
    random_backbone,
    train_method,
)
from solo_stablerep.errors import DemoError
from solo_stablerep.storage import atomic_write_json

logger = logging.getLogger(__name__)


def check_options(
    size: DemoSize,
    methods,
    seeds,
    config_dir: Path,
    output: Path,
    workers: int = 0,
    extra_overrides=(),
) -> None:
    """Raises :class:`DemoError` (one line) for options the runs cannot honour, before any work:
    every run's config is composed here, ``--set`` values checked against the config's types."""

    check_output_folder(output)
    if "${" in str(output):  # solo-learn resolves its config again: Hydra's quotes do not hold
        raise DemoError(
            f"--output {output}: '${{' in the path reads as a config interpolation: give a folder "
            "without it"
        )
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
    if size.synclr_settings not in SYNCLR_SETTINGS:  # the CLI offers only these; a caller may not
        raise DemoError(
            f"synclr_settings {size.synclr_settings!r}: choose from {list(SYNCLR_SETTINGS)}"
        )
    data_root = output / "data"
    for method in methods:
        run_dir = output / "runs" / f"seed{seeds[0]}" / method
        overrides = method_overrides(method, size, data_root, run_dir, seeds[0], workers)
        base = compose(config_dir, method, overrides)
        check_set_types(
            base,
            compose(config_dir, method, overrides + list(extra_overrides)),
            method,
            extra_overrides,
        )


RUN_FILE = "demo-run.json"  # the options of the run whose results the output folder holds
REPORT_FILES = ("results.json", "results.md", "results.png")


def run_options(size: DemoSize, methods, seeds, config_dir: Path, extra_overrides) -> dict:
    """What a run's results depend on, as :data:`RUN_FILE` holds it (not the workers or threads:
    they change its speed only)."""

    options = {
        "size": asdict(size),
        "methods": list(methods),
        "seeds": list(seeds),
        "set": list(extra_overrides),
        "config_dir": str(config_dir),
    }
    return json.loads(json.dumps(options))  # as read back


def claim_output(output: Path, options: dict, overwrite: bool) -> None:
    """Makes ``output`` the folder of the run of ``options`` (written to :data:`RUN_FILE` before
    any work). The same options again: the run is redone there. Another run's results, or a folder
    holding something else, are never replaced without ``overwrite`` (:class:`DemoError`)."""

    marker = output / RUN_FILE
    if marker.is_file():
        try:
            before = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        if before == options:
            return
        if not overwrite:
            raise DemoError(
                f"--output {output} holds the results of a run with other options "
                f"({_differences(before, options)}): pass --overwrite to replace them, or give "
                "another --output"
            )
    elif output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DemoError(
            f"--output {output} is not empty and holds no demo run: give a new or empty folder, "
            "or pass --overwrite"
        )
    output.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # another run's report: gone before this run reports
        (output / name).unlink(missing_ok=True)
    atomic_write_json(marker, options)


def _differences(before: dict, now: dict) -> str:
    """``key: then -> now`` for the options that differ, the size's fields one by one."""

    def flat(options):
        size = options.get("size") if isinstance(options.get("size"), dict) else {}
        return {**{k: v for k, v in options.items() if k != "size"}, **size}

    before, now = flat(before), flat(now)
    changed = [k for k in now if before.get(k) != now[k]]
    return ", ".join(f"{k}: {before.get(k)} -> {now[k]}" for k in changed) or "unreadable"


def save_run_config(
    configs_dir: Path, method: str, config_dir: Path, composed_yaml: str, overrides: list
) -> None:
    """A method's composed config and the ``solo-stablerep-pretrain`` command that reproduces it."""

    (configs_dir / f"{method}.yaml").write_text(composed_yaml)
    command = [
        "solo-stablerep-pretrain",
        f"--config-path {shlex.quote(str(config_dir))}",
        f"--config-name {method}.yaml",
        *map(shlex.quote, overrides),
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
    overwrite: bool = False,
) -> dict:
    """Runs the whole demo into ``output``; returns what ``results.json`` holds.

    ``config_dir`` defaults to :func:`~solo_stablerep.demo.runs.default_config_dir`. ``output``
    may hold this run's files from before (the same options: the run is redone), else nothing
    but with ``overwrite`` (:func:`claim_output`).
    """

    import torch

    # Small convolutions on a few shared cores: OpenMP threads mostly wait on each other (measured
    # 8x slower with 2 threads than 1 on a busy 2-core machine); the data worker takes another core.
    torch.set_num_threads(threads)

    config_dir = (config_dir or default_config_dir()).resolve()
    output = output.resolve()
    check_options(size, methods, seeds, config_dir, output, workers, extra_overrides)
    claim_output(output, run_options(size, methods, seeds, config_dir, extra_overrides), overwrite)
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
