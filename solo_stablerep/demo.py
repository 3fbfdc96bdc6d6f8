"""``stablerep-demo``: the whole StableRep idea, end to end, on a laptop CPU in minutes.

1. writes captions naming light handwritten-looking digits on dark backgrounds, with colour, size
   and style words (label = the digit): the look of the real probe images, as the paper's
   captions describe the kind of images its probes hold;
2. renders many images per caption with data_gen's weights-free procedural backend;
3. pretrains StableRep and the baselines (SimCLR, BYOL; SupCon on request) from the configs in
   ``scripts/pretrain/synthetic/`` through :func:`solo_stablerep.pretrain.run_pretrain`, shrunk by
   command-line-style overrides only (resnet18 at 32 px, tiny projector, a few hundred steps, and
   augmentations suited to digits: no mirroring, whole-digit crops, the probe's 8 px resolution);
4. probes the frozen backbones on REAL images: scikit-learn's handwritten digits (kNN, logistic
   regression on all labels and on 5 labels per class), with a randomly initialised backbone as the floor;
5. writes ``results.md`` / ``results.json``, a plot, the contact sheet and the configs used.

Every method sees the same number of crops per step for the same number of steps, with the same
effective learning rate and the same images: StableRep's crops come from ``views`` images of each
caption (one crop each), SimCLR's, BYOL's and SupCon's from 2 crops of each image, every image an
item of its own (a second manifest over the same files), as those methods know no captions.

The procedural images are toys: the numbers say whether the pipeline works and how the methods
compare on this toy, not how StableRep does on Stable Diffusion images.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import mean, stdev

from solo_stablerep._paths import pretrain_config_dir

DEFAULT_CONFIG_DIR = pretrain_config_dir("synthetic")
METHODS = ("stablerep", "simclr", "byol", "supcon")
DEFAULT_METHODS = ("stablerep", "simclr", "byol")
RANDOM_FLOOR = "random init"

# caption vocabulary the procedural renderer draws (style words only flavour the text: the renderer's
# per-seed variation gives each image its own slant, stroke width, pose and noise). Light ink on a
# dark ground, digits filling most of the frame, like sklearn's scans: with small, dark-on-light or
# colourful digits even a supervised classifier trained on the images fell below the floor (README).
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("white", "yellow", "cyan", "pink", "orange", "gray")
SIZES = ("big", "huge")
STYLES = ("handwritten", "bold", "thin", "slanted", "neat", "scribbled")
BACKGROUNDS = ("on a dark background", "on a black background")
# measured: orange "big" digits on a "dark" ground left StableRep below the floor where this passed
SCAN_LIKE = ("white", "huge", "handwritten", "on a black background", False)
# sklearn's digits are 8x8 scans: every training image goes through StableRep's downsample
# augmentation to this size and back, so training sees the probe's resolution
SCAN_SIZE = 8

# the per-step loss each method logs (solo-learn's names; on_step + on_epoch adds "_step")
LOSS_COLUMNS = {
    "stablerep": "train_stablerep_loss_step",
    "simclr": "train_nce_loss_step",
    "supcon": "train_nce_loss_step",
    "byol": "train_neg_cos_sim_step",
}
FEW_SHOTS = 5  # labelled real images per digit for the few-shot probe
# (result key, short name) of each probe accuracy, in table order
ACCURACIES = (("knn_acc", "kNN"), ("linear_acc", "linear"), ("few_shot_acc", f"{FEW_SHOTS}-shot"))


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is; every method gets ``steps`` steps of ``crops_per_step`` crops."""

    captions_per_class: int
    images_per_caption: int  # generated per caption (the paper: 10)
    views: int  # images of a caption StableRep uses per step (the paper: 6)
    crop_size: int
    crops_per_step: int  # a multiple of views and of 2 (SimCLR/BYOL: 2 crops of one image)
    steps: int
    proj_hidden_dim: int
    proj_output_dim: int
    lr: float  # effective AdamW lr for every method (solo-learn's batch scaling is undone below)


SIZES_PRESETS = {
    # one caption per digit x 100 images; ~7 minutes on 2 CPU cores for 3 methods x 1 seed. More
    # captions per digit make same-digit captions negatives of each other that differ only in
    # nuisance words, and StableRep then learns those (README: what we tried)
    "default": DemoSize(1, 100, 8, 32, 64, 200, 512, 128, 2e-3),
    # the end-to-end test: fewer images and steps
    "tiny": DemoSize(1, 40, 8, 32, 64, 150, 512, 128, 2e-3),
}


class DemoError(Exception):
    """Bad options or missing inputs; the message is one line."""


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def write_captions(path: Path, captions_per_class: int, seed: int) -> int:
    """A CSV (caption, label) of distinct captions, ``captions_per_class`` per digit; returns the count.

    Every digit gets the same ``captions_per_class`` descriptions (colour, size, style, background):
    words that differ between digits would let a method tell the digits apart by colour alone. The
    first is the closest to the scans (:data:`SCAN_LIKE`), the others are drawn at random.
    """

    rng = random.Random(seed)
    others = [c for c in itertools.product(COLOURS, SIZES, STYLES, BACKGROUNDS, (False, True)) if c != SCAN_LIKE]
    rows = []
    for colour, size, style, background, as_word in [SCAN_LIKE, *rng.sample(others, captions_per_class - 1)]:
        for digit in range(10):
            name = f"number {NUMBER_WORDS[digit]}" if as_word else f"digit {digit}"
            rows.append((f"a {size} {style} {colour} {name} {background}", digit))
    rng.shuffle(rows)  # mixed digits in the contact sheet's first rows
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "label"])
        writer.writerows(rows)
    return len(rows)


def generate_images(captions: Path, root: Path, size: DemoSize, seed: int) -> dict:
    from data_gen import GenerationSettings, RunOptions, generate

    settings = GenerationSettings(
        backend="procedural",
        images_per_caption=size.images_per_caption,
        resolution=max(64, 8 * math.ceil(2 * size.crop_size / 8)),  # render finer, store at crop size
        image_size=size.crop_size,
        image_format="png",
        seed=seed,
    )
    options = RunOptions(batch_size=16, overwrite=True, progress=False, contact_sheet_captions=10)
    return generate(captions, root, settings, options)


def per_image_root(data_root: Path) -> Path:
    """Where :func:`write_per_image_manifest` puts the image-level view of ``data_root``."""

    return data_root.with_name(data_root.name + "_per_image")


def write_per_image_manifest(data_root: Path) -> Path:
    """A second data set over the same files in which every image is an item (its caption repeated):
    the input of SimCLR, BYOL and SupCon, which know no captions. ``images`` is a link to the
    original folder, so nothing is copied."""

    from solo_stablerep.data.manifest import CaptionRecord, read_manifest, write_manifest

    header, records = read_manifest(data_root)
    root = per_image_root(data_root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "images").symlink_to((data_root / "images").resolve(), target_is_directory=True)
    items = [
        CaptionRecord(f"{record.caption_id}_{k:02d}", record.caption, record.label, [image])
        for record in records
        for k, image in enumerate(record.images)
    ]
    write_manifest(root, items, class_names=header["class_names"], generator=header["generator"])
    return root


def method_overrides(method: str, size: DemoSize, data_root: Path, run_dir: Path, seed: int, workers: int) -> list:
    """Command-line overrides that shrink ``scripts/pretrain/synthetic/<method>.yaml`` to the demo.
    StableRep reads ``data_root``, the other methods its per-image view (:func:`per_image_root`)."""

    # StableRep: an item is a caption, one crop of each of `views` of its images; the others: an
    # item is an image, 2 crops of it (solo-learn lets only StableRep use more than 2 large crops)
    per_caption = method == "stablerep"
    crops_per_item = size.views if per_caption else 2
    batch_size = size.crops_per_step // crops_per_item  # items per step
    num_items = 10 * size.captions_per_class * (1 if per_caption else size.images_per_caption)
    steps_per_epoch = num_items // batch_size  # solo-learn's loader drops the last partial batch
    if steps_per_epoch == 0:
        raise DemoError(f"{method}: {batch_size} items per step but only {num_items} items")
    max_epochs = math.ceil(size.steps / steps_per_epoch)
    overrides = [
        "backbone.name=resnet18",
        "accelerator=cpu",
        "devices=1",
        "strategy=auto",
        "precision=32",
        "sync_batchnorm=False",
        "wandb.enabled=False",
        "auto_resume.enabled=False",
        "checkpoint.enabled=False",  # the demo probes the in-memory model
        f"data.train_path={data_root if per_caption else per_image_root(data_root)}",
        f"data.num_workers={workers}",
        f"augmentations.0.crop_size={size.crop_size}",
        "augmentations.0.horizontal_flip.prob=0.0",  # a mirrored 2 is no digit
        "augmentations.0.rrc.crop_min_scale=0.3",  # 8% of a digit is a stroke, not a digit
        "data.synthetic.downsample.prob=1.0",
        f"data.synthetic.downsample.sizes=[{SCAN_SIZE}]",
        f"method_kwargs.proj_hidden_dim={size.proj_hidden_dim}",
        f"method_kwargs.proj_output_dim={size.proj_output_dim}",
        f"optimizer.batch_size={batch_size}",
        # solo-learn multiplies lr by batch_size / 256: undo it so every method gets size.lr
        f"optimizer.lr={size.lr * 256 / batch_size:.6g}",
        f"max_epochs={max_epochs}",
        f"++max_steps={size.steps}",
        # warm-up over the first 10% of the steps (solo-learn counts it in epochs of max_epochs)
        f"scheduler.warmup_epochs={0.1 * max_epochs:.6g}",
        f"++seed={seed}",
        f"++default_root_dir={run_dir}",
        f"++log_every_n_steps={max(1, size.steps // 60)}",
        "++enable_progress_bar=False",
        "++enable_model_summary=False",
    ]
    if per_caption:
        overrides.append(f"data.synthetic.n_img={crops_per_item}")
    if method == "supcon":  # its config takes one crop of each of 2 images of a caption
        overrides += ["data.synthetic.n_img=1", "augmentations.0.num_crops=2"]
    if method == "byol":
        overrides.append(f"method_kwargs.pred_hidden_dim={size.proj_hidden_dim}")
    return overrides


def compose(config_dir: Path, method: str, overrides: list):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        return hydra_compose(config_name=f"{method}.yaml", overrides=overrides)


def read_loss_curve(run_dir: Path, method: str) -> list:
    """(step, loss) pairs from the CSV log Lightning writes under ``run_dir``."""

    logs = sorted(run_dir.glob("lightning_logs/version_*/metrics.csv"))
    if not logs:
        return []
    with logs[-1].open(newline="") as f:
        rows = list(csv.DictReader(f))
    column = LOSS_COLUMNS.get(method)
    if not rows or column not in rows[0]:
        return []
    return [(int(row["step"]), float(row[column])) for row in rows if row.get(column)]


def train_method(method, size, config_dir, data_root, run_dir, seed, workers, extra_overrides):
    """Pretrains one method; returns (backbone, result row, loss curve, composed config YAML, overrides)."""

    from omegaconf import OmegaConf

    from solo_stablerep.pretrain import run_pretrain

    overrides = method_overrides(method, size, data_root, run_dir, seed, workers) + list(extra_overrides)
    cfg = compose(config_dir, method, overrides)
    composed_yaml = OmegaConf.to_yaml(cfg)
    started = time.perf_counter()
    trainer = run_pretrain(cfg)
    seconds = time.perf_counter() - started
    crops_per_step = cfg.optimizer.batch_size * cfg.data.num_large_crops
    row = {
        "method": method,
        "seed": seed,
        "train_seconds": seconds,
        "steps": trainer.global_step,
        "images_seen": trainer.global_step * crops_per_step,
    }
    return trainer.lightning_module.backbone, row, read_loss_curve(run_dir, method), composed_yaml, overrides


def random_backbone(size, config_dir, data_root, run_dir, seed):
    """The floor: StableRep's model as built before any training step."""

    from lightning.pytorch import seed_everything

    from solo_stablerep.pretrain import METHODS as SOLO_METHODS
    from solo_stablerep.pretrain import parse_pretrain_cfg

    cfg = parse_pretrain_cfg(compose(config_dir, "stablerep", method_overrides("stablerep", size, data_root, run_dir, seed, 0)))
    seed_everything(seed, verbose=False)
    return SOLO_METHODS["stablerep"](cfg).backbone


def summarise(rows: list, methods: list) -> list:
    """Per method: mean and spread (sample std over seeds; 0 with one seed) of each measure."""

    summary = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        entry = {"method": method, "seeds": [row["seed"] for row in mine]}
        for key in (*(key for key, _ in ACCURACIES), "train_seconds", "images_seen"):
            values = [row[key] for row in mine]
            entry[key] = mean(values)
            entry[f"{key}_std"] = stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(summary: list) -> str:
    def accuracy(entry, key):
        return f"{entry[key]:.3f} ± {entry[key + '_std']:.3f}" if len(entry["seeds"]) > 1 else f"{entry[key]:.3f}"

    lines = [
        "| method | " + " | ".join(f"{name} acc" for _, name in ACCURACIES) + " | train time (s) | images seen |",
        "|---" * (len(ACCURACIES) + 3) + "|",
    ]
    for entry in summary:
        time_text = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['train_seconds']:.0f}"
        seen = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['images_seen']:,.0f}"
        accuracies = " | ".join(accuracy(entry, key) for key, _ in ACCURACIES)
        lines.append(f"| {entry['method']} | {accuracies} | {time_text} | {seen} |")
    return "\n".join(lines)


def accuracy_text(row: dict) -> str:
    return " ".join(f"{name} {row[key]:.3f}" for key, name in ACCURACIES)


def plot(summary: list, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [m for m in curves if curves[m]]
    fig, axes = plt.subplots(1, 1 + len(trained), figsize=(4.5 * (1 + len(trained)), 4), squeeze=False)
    bars = axes[0][0]
    names = [entry["method"] for entry in summary]
    x = range(len(names))
    width = 0.8 / len(ACCURACIES)
    for i, (key, label) in enumerate(ACCURACIES):
        offset = (i - (len(ACCURACIES) - 1) / 2) * width
        bars.bar([j + offset for j in x], [e[key] for e in summary], width,
                 yerr=[e[key + "_std"] for e in summary], capsize=3, label=label)
    bars.set_xticks(list(x), names, rotation=20)
    bars.set_ylim(0, 1)
    bars.set_ylabel("accuracy on real digits (sklearn)")
    bars.set_title("frozen-backbone probes")
    bars.legend(loc="lower right")
    for ax, method in zip(axes[0][1:], trained):
        for seed, curve in curves[method].items():
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=f"seed {seed}", alpha=0.8)
        ax.set_title(f"{method}: {LOSS_COLUMNS[method].removesuffix('_step')}")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    output: Path,
    size: DemoSize,
    methods=DEFAULT_METHODS,
    seeds=(0,),
    config_dir: Path = DEFAULT_CONFIG_DIR,
    workers: int = 0,
    extra_overrides=(),
    threads: int = 1,
) -> dict:
    """Runs the whole demo into ``output``; returns what ``results.json`` holds."""

    import torch

    from solo_stablerep.evaluation import evaluate_backbone, load_real_digits

    # Small convolutions on a few shared cores: OpenMP threads mostly wait on each other (measured
    # 8x slower with 2 threads than 1 on a busy 2-core machine); the data worker takes another core.
    torch.set_num_threads(threads)

    if not (config_dir / "stablerep.yaml").is_file():
        raise DemoError(f"no stablerep.yaml in {config_dir}: pass --config-dir scripts/pretrain/synthetic")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DemoError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if size.crops_per_step % size.views or size.crops_per_step % 2:
        raise DemoError(f"crops per step {size.crops_per_step} must be a multiple of views {size.views} and of 2")
    if size.views > size.images_per_caption:
        raise DemoError(f"views {size.views} > images per caption {size.images_per_caption}")
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    captions = output / "captions.csv"
    count = write_captions(captions, size.captions_per_class, seed=0)
    t = time.perf_counter()
    data_root = output / "data"
    generate_images(captions, data_root, size, seed=0)
    write_per_image_manifest(data_root)
    log(f"generated {count} captions x {size.images_per_caption} images ({size.crop_size} px) "
        f"in {time.perf_counter() - t:.1f} s -> {data_root}")
    sheets = sorted((data_root / "contact_sheets").glob("*.png"))
    if sheets:
        shutil.copyfile(sheets[0], output / "contact_sheet.png")

    probe_data = load_real_digits(size.crop_size)
    log(f"real probe set: sklearn digits, {len(probe_data.train_labels)} train / "
        f"{len(probe_data.test_labels)} test, upsampled 8 -> {size.crop_size} px")

    configs_dir = output / "configs"
    configs_dir.mkdir(exist_ok=True)
    rows, curves = [], {m: {} for m in methods}
    for seed in seeds:
        run_root = output / "runs" / f"seed{seed}"
        backbone = random_backbone(size, config_dir, data_root, run_root / "random", seed)
        rows.append({"method": RANDOM_FLOOR, "seed": seed, "train_seconds": 0.0, "images_seen": 0,
                     **evaluate_backbone(backbone, probe_data, shots=FEW_SHOTS)})
        log(f"seed {seed} {RANDOM_FLOOR}: {accuracy_text(rows[-1])}")
        for method in methods:
            run_dir = run_root / method
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh CSV log for the loss curve
            backbone, row, curve, composed_yaml, overrides = train_method(
                method, size, config_dir, data_root, run_dir, seed, workers, extra_overrides
            )
            t = time.perf_counter()
            row.update(evaluate_backbone(backbone, probe_data, shots=FEW_SHOTS))
            rows.append(row)
            curves[method][seed] = curve
            log(f"seed {seed} {method}: {row['steps']} steps, {row['images_seen']:,} images in "
                f"{row['train_seconds']:.0f} s; probes ({time.perf_counter() - t:.0f} s): {accuracy_text(row)}")
            if seed == seeds[0]:
                (configs_dir / f"{method}.yaml").write_text(composed_yaml)
                command = ["solo-stablerep-pretrain", f"--config-path {config_dir}",
                           f"--config-name {method}.yaml", *overrides]
                (configs_dir / f"{method}.command.txt").write_text(" \\\n    ".join(command) + "\n")

    summary = summarise(rows, [RANDOM_FLOOR, *methods])
    table = markdown_table(summary)
    results = {
        "size": asdict(size),
        "methods": list(methods),
        "seeds": list(seeds),
        "probe": "sklearn.datasets.load_digits, stratified 50/50 split; kNN k=20 cosine; "
                 "logistic regression on standardised features, fitted on all train labels and on "
                 f"{FEW_SHOTS} per class (mean of 10 draws)",
        "summary": summary,
        "runs": rows,
        "loss_curves": {m: {str(s): c for s, c in per_seed.items()} for m, per_seed in curves.items()},
        "total_seconds": time.perf_counter() - started,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    seeds_text = ", ".join(map(str, seeds))
    (output / "results.md").write_text(
        f"# StableRep demo results\n\nProbes on real handwritten digits (sklearn), seeds {seeds_text} "
        f"(mean ± sample std over seeds).\n\n{table}\n"
    )
    plot(summary, curves, output / "results.png")
    print(table, flush=True)
    log(f"done in {results['total_seconds']:.0f} s; results, plot, contact sheet and configs in {output}")
    return results


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="stablerep-demo",
        description="Synthetic images from captions -> StableRep and baselines (solo-learn configs) -> "
        "kNN and linear probes on real handwritten digits -> table and plot.",
    )
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    p.add_argument("--size", choices=tuple(SIZES_PRESETS), default="default",
                   help="preset: default (~7 min on 2 cores) or tiny (the test, ~4 min)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds; give 2 or more for the spread (default: 0, which fits in 10 minutes)")
    p.add_argument("--steps", type=int, help="training steps per method (preset's otherwise)")
    p.add_argument("--views", type=int, help="images per caption StableRep uses per step")
    p.add_argument("--images-per-caption", type=int, help="images generated per caption")
    p.add_argument("--captions-per-class", type=int)
    p.add_argument("--crops-per-step", type=int, help="crops per step for every method (a multiple of views and 2)")
    p.add_argument("--lr", type=float, help="effective AdamW learning rate of every method")
    # 0: StableRep's epochs are one step long here (10 captions), and starting workers every
    # epoch cost more than they overlapped (measured)
    p.add_argument("--workers", type=int, default=0, help="data loader workers (default 0: the main process)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for training and probes")
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                   help="solo-learn config folder (default: scripts/pretrain/synthetic of this repo)")
    p.add_argument("--set", dest="extra_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every run, e.g. --set method_kwargs.temperature=0.2")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # library noise (timm/solo deprecations, Lightning banners) would bury the demo's progress lines
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*(Overwriting|num_workers|does not have many workers).*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    size = SIZES_PRESETS[args.size]
    chosen = {
        "steps": args.steps, "views": args.views, "images_per_caption": args.images_per_caption,
        "captions_per_class": args.captions_per_class, "lr": args.lr,
        "crops_per_step": args.crops_per_step,
    }
    size = replace(size, **{k: v for k, v in chosen.items() if v is not None})
    from data_gen import DataGenError

    try:
        run_demo(args.output, size, args.methods, args.seeds, args.config_dir.resolve(), args.workers,
                 args.extra_overrides, args.threads)
    except (DemoError, DataGenError, ValueError) as error:  # config and data errors: one line
        print(f"stablerep-demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
