"""``stablerep-demo`` / ``python -m solo_stablerep.demo``: options, console output, exit status."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from solo_stablerep.console import (
    ArgumentParser,
    configure_logging,
    int_at_least,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
    seed_int,
)
from solo_stablerep.demo.captions import MAX_CAPTIONS_PER_CLASS
from solo_stablerep.demo.runs import DEFAULT_METHODS, METHODS, SIZES_PRESETS, SYNCLR_SETTINGS


def _parse_args(argv):
    p = ArgumentParser(
        prog="stablerep-demo",
        description="Synthetic images from captions -> StableRep and baselines (solo-learn "
        "configs) -> kNN, linear and few-shot probes on real handwritten digits -> table and plot.",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("demo_output"),
        help="output folder (default: demo_output); the same command again redoes the run there",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of another run (other options) in --output",
    )
    p.add_argument(
        "--size",
        choices=tuple(SIZES_PRESETS),
        default="default",
        help="preset: default (about 5 min on 2 idle cores) or tiny (the test)",
    )
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument(
        "--seeds",
        nargs="+",
        type=seed_int,
        default=[0],
        help="training seeds; give 2 or more for the spread (default: 0, which fits in 10 minutes)",
    )
    p.add_argument(
        "--steps", type=positive_int, help="training steps per method (preset's otherwise)"
    )
    p.add_argument("--views", type=positive_int, help="images per caption StableRep uses per step")
    p.add_argument("--images-per-caption", type=positive_int, help="images generated per caption")
    p.add_argument(
        "--captions-per-class",
        type=int_at_least(1, MAX_CAPTIONS_PER_CLASS),
        help=f"distinct captions per digit (at most {MAX_CAPTIONS_PER_CLASS})",
    )
    p.add_argument(
        "--crops-per-step",
        type=int_at_least(2),
        help="crops per step for every method (a multiple of views and 2)",
    )
    p.add_argument(
        "--lr", type=positive_float, help="effective AdamW learning rate of every method"
    )
    p.add_argument(
        "--synclr-settings",
        choices=SYNCLR_SETTINGS,
        help="short-run (default): BN heads, no predictor, no local crops, EMA 0.9, what the "
        "ablation found for these short runs; config: synclr.yaml's own (the paper's heads)",
    )
    # 0: StableRep's epochs are one step long here (10 captions), and starting workers every
    # epoch cost more than they overlapped (measured)
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="data loader workers (default 0: the main process)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch CPU threads for training and probes"
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="solo-learn config folder (default: scripts/pretrain/synthetic of this repo)",
    )
    p.add_argument(
        "--set",
        dest="extra_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every run, e.g. --set method_kwargs.temperature=0.2",
    )
    return p.parse_args(argv)


# Warnings a demo user can do nothing about, matched by message (anything else still shows):
# Lightning's CSV logger stands in for tensorboard, and the demo reads its CSV; the demo probes
# after training, so there is no val loader; no accelerator to pin memory for; StableRep's 10
# captions make one-step epochs, shorter than the logging interval; deprecations inside
# solo-learn, Lightning and timm; few loader workers is the demo's choice (``--workers``).
UNACTIONABLE_WARNINGS = (
    "Starting from v1.9.0, `tensorboardX` has been removed",
    "You defined a `validation_step` but have no `val_dataloader`",
    "'pin_memory' argument is set as true but no accelerator is found",
    "The number of training batches",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "The 'warn' function is deprecated",
    "Overwriting",
    "The dataloader, train_dataloader, does not have many workers",
)
# solo-learn's log line for every run with a per-step schedule; the demo never resumes
UNACTIONABLE_LOG_LINES = ("Using scheduler_interval=step might generate issues when resuming",)


def _configure_output() -> None:
    """Progress lines on stderr; library noise (Lightning banners, warnings a user cannot act on)
    would bury them."""

    configure_logging("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not record.getMessage().startswith(UNACTIONABLE_LOG_LINES))
    # Lightning gives its loggers handlers of their own when imported ("lightning" always,
    # "lightning.pytorch"/"lightning.fabric" if logging was not configured yet), which print its
    # INFO banners whatever our filter says: import it now and quiet those handlers
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.setLevel(logging.WARNING)
    for message in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=".*" + re.escape(message))


def _main(argv) -> None:
    args = _parse_args(argv)
    _configure_output()
    size = SIZES_PRESETS[args.size]
    chosen = {
        "steps": args.steps,
        "views": args.views,
        "images_per_caption": args.images_per_caption,
        "captions_per_class": args.captions_per_class,
        "lr": args.lr,
        "crops_per_step": args.crops_per_step,
        "synclr_settings": args.synclr_settings,
    }
    size = replace(size, **{k: v for k, v in chosen.items() if v is not None})
    # torch and scikit-learn load once the options are read
    from solo_stablerep.demo.pipeline import run_demo
    from solo_stablerep.demo.report import markdown_table

    results = run_demo(
        args.output,
        size,
        args.methods,
        args.seeds,
        args.config_dir.resolve() if args.config_dir else None,
        args.workers,
        args.extra_overrides,
        args.threads,
        args.overwrite,
    )
    print(markdown_table(results["summary"]), flush=True)  # the result, on stdout


def main(argv=None) -> int:
    # options, config and data errors (DemoError, DataGenError, ...): one line
    return run_command("stablerep-demo", lambda: _main(sys.argv[1:] if argv is None else argv))
