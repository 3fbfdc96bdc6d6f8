"""One pretraining run per method: the demo's budget, the overrides that shrink the shipped
configs to it, the run itself and the loss curve Lightning logged.

Every method sees the same number of crops per step for the same number of steps, with the same
effective learning rate and the same images: StableRep's crops come from ``views`` images of each
caption (one crop each), SimCLR's, BYOL's and SupCon's from 2 crops of each image, every image an
item of its own (:func:`solo_stablerep.demo.dataset.write_per_image_manifest`), as those methods
know no captions. SynCLR reads captions as StableRep does (the same global crops), with its
short-run settings (:data:`SYNCLR_SHORT_RUN`, no local crops) or, with ``--synclr-settings config``,
the config's (4 local crops of each image at half the crop size).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from solo_stablerep._paths import pretrain_config_dir
from solo_stablerep.demo.dataset import per_image_root
from solo_stablerep.errors import DemoError

logger = logging.getLogger(__name__)

METHODS = ("stablerep", "simclr", "supcon", "byol", "synclr")
CAPTION_METHODS = ("stablerep", "synclr")  # an item is a caption, one global crop of each image
# SupCon learns from the digit labels: the ceiling of these images at this budget, which shows
# the room between the floor and what any method could reach (BYOL on request: --methods)
CEILING = "supcon"
DEFAULT_METHODS = ("stablerep", "simclr", CEILING)
RANDOM_FLOOR = "random init"  # the untrained backbone's name in the results
# sklearn's digits are 8x8 scans: every training image goes through StableRep's downsample
# augmentation to this size and back, so training sees the probe's resolution
SCAN_SIZE = 8
# the per-step loss each method logs (solo-learn's names; on_step + on_epoch adds "_step")
LOSS_COLUMNS = {
    "stablerep": "train_stablerep_loss_step",
    "simclr": "train_nce_loss_step",
    "supcon": "train_nce_loss_step",
    "byol": "train_neg_cos_sim_step",
    "synclr": "train_synclr_loss_step",
}

# the collapse and health signals the caption methods log (solo_stablerep.methods.health), shown
# in the progress lines: embedding std (0 = collapsed, ~1/sqrt(d) healthy), SynCLR's agreement
HEALTH_COLUMNS = {
    "embedding std": "train_embedding_std_step",
    "student-teacher cos": "train_student_teacher_cosine_step",
}


def default_config_dir() -> Path:
    """The solo-learn config folder the demo shrinks: the shipped ``synthetic`` configs."""

    return pretrain_config_dir("synthetic")


# SynCLR's settings for the demo's short runs on 8 px digits in a 32 px frame: at 300 steps each
# part SynCLR adds to StableRep costs accuracy here, and the config's own settings leave the
# backbone at or below the untrained floor (docs/synclr.md#the-ablation-2026-12-07). The shipped
# configs keep the paper's; --synclr-settings config runs them.
SYNCLR_SHORT_RUN = (
    "++method_kwargs.head_norm=bn",  # the LayerNorm heads collapse in their first ten steps
    "++method_kwargs.pred_num_layers=0",  # predicting a still near-random teacher
    # a local crop of a frame holding an 8 px scan is a stroke; without them a step costs about
    # StableRep's
    "augmentations.1.num_crops=0",
    "method_kwargs.num_local_crops=0",
    # a teacher that follows within ~10 steps: at 0.994 it is still half random at step 95
    "momentum.base_tau=0.9",
)
SYNCLR_SETTINGS = ("short-run", "config")


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is; every method gets ``steps`` steps of ``crops_per_step`` crops.
    ``synclr_settings``: ``short-run`` (:data:`SYNCLR_SHORT_RUN` on top of the config) or
    ``config`` (the shipped config's own)."""

    captions_per_class: int
    images_per_caption: int  # generated per caption (the paper: 10)
    views: int  # images of a caption StableRep uses per step (the paper: 6)
    crop_size: int
    crops_per_step: int  # a multiple of views and of 2 (SimCLR/BYOL: 2 crops of one image)
    steps: int
    proj_hidden_dim: int
    proj_output_dim: int
    lr: float  # effective AdamW lr for every method (solo-learn's batch scaling is undone below)
    synclr_settings: str = "short-run"


SIZES_PRESETS = {
    # one caption per digit x 100 images; about 5 minutes on 2 idle cores for 3 methods x 1 seed.
    # More captions per digit make same-digit captions negatives of each other that differ only in
    # nuisance words, and StableRep then learns those (docs/demo.md: what was learned). 300 steps:
    # every loss still fell at 200, and StableRep's grouped forward paid for the 100 more
    "default": DemoSize(1, 100, 8, 32, 64, 300, 512, 128, 2e-3),
    # the end-to-end test: fewer images and steps
    "tiny": DemoSize(1, 40, 8, 32, 64, 150, 512, 128, 2e-3),
}


def hydra_quoted(text: str) -> str:
    """``text`` as a quoted value of a Hydra override, read back as ``text`` whatever it holds
    (``=``, ``,``, quotes, brackets, spaces): a path of the user's. Hydra's quoted strings escape
    a quote, and the backslashes before one or at the end. (``${`` stays an interpolation:
    :func:`~solo_stablerep.demo.pipeline.check_options` refuses it.)"""

    def escape(match: re.Match) -> str:
        backslashes, quote = match.groups()
        return 2 * backslashes + ("\\" + quote if quote else "")

    return "'" + re.sub(r"(\\*)('|$)", escape, text) + "'"


def method_overrides(
    method: str, size: DemoSize, data_root: Path, run_dir: Path, seed: int, workers: int
) -> list:
    """Command-line overrides that shrink ``scripts/pretrain/synthetic/<method>.yaml`` to the demo.
    StableRep reads ``data_root``, the other methods its per-image view (:func:`per_image_root`)."""

    # StableRep: an item is a caption, one crop of each of `views` of its images; the others: an
    # item is an image, 2 crops of it (solo-learn lets only StableRep use more than 2 large crops)
    per_caption = method in CAPTION_METHODS
    train_path = data_root if per_caption else per_image_root(data_root)
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
        f"data.train_path={hydra_quoted(str(train_path))}",
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
        f"++default_root_dir={hydra_quoted(str(run_dir))}",
        f"++log_every_n_steps={max(1, size.steps // 60)}",
        "++enable_progress_bar=False",
        "++enable_model_summary=False",
    ]
    if per_caption:
        overrides.append(f"data.synthetic.n_img={crops_per_item}")
    if method in ("stablerep", "synclr"):
        # solo-learn forwards each view on its own: 8 calls of 8 crops against SimCLR's 2 of 32,
        # twice the time at 32 px. Two calls of half the views each see SimCLR's crops per call
        # (so BatchNorm also sees its batch size); an odd number of views stays per view.
        # SynCLR's local crops (4 per global one) go through the same number of views per call.
        group = size.views // 2 if size.views % 2 == 0 else 1
        overrides.append(f"++method_kwargs.views_per_backbone_call={group}")
    if method == "supcon":  # its config takes one crop of each of 2 images of a caption
        overrides += ["data.synthetic.n_img=1", "augmentations.0.num_crops=2"]
    if method == "byol":
        overrides.append(f"method_kwargs.pred_hidden_dim={size.proj_hidden_dim}")
    if method == "synclr":
        overrides += [
            f"augmentations.1.crop_size={size.crop_size // 2}",
            "augmentations.1.horizontal_flip.prob=0.0",
            f"++method_kwargs.pred_hidden_dim={size.proj_hidden_dim}",
        ]
        if size.synclr_settings == "short-run":
            overrides += SYNCLR_SHORT_RUN
    return overrides


def compose(config_dir: Path, method: str, overrides: list):
    """``<config_dir>/<method>.yaml`` with ``overrides``, composed by Hydra."""

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        try:
            return hydra_compose(config_name=f"{method}.yaml", overrides=overrides)
        except HydraException as error:
            # a --set KEY=VALUE the config lacks or Hydra cannot parse: Hydra's words, one line
            raise DemoError(f"{method}: {' '.join(str(error).split())}") from error


# what a --set value must be where the config has a value of this type (bool before int: a bool is
# an int to Python)
_TYPE_WORDS = ((bool, "True or False"), (int, "a whole number"), (float, "a number"))


def check_set_types(base, composed, method: str, extra_overrides) -> None:
    """Raises :class:`DemoError` (one line) for a ``--set KEY=VALUE`` whose value has another type
    than ``KEY``'s in the ``base`` config (a word where a number goes, a number where a list goes):
    solo-learn and Lightning would stop on it with a traceback, after the runs before it."""

    from omegaconf import DictConfig, ListConfig, OmegaConf

    for override in extra_overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if key.startswith("~"):
            continue
        was = OmegaConf.select(base, key, default=None)
        now = OmegaConf.select(composed, key, default=None)
        if was is None or now is None or isinstance(was, str):  # null: the user's choice
            continue
        for kind, words in (*_TYPE_WORDS, (DictConfig, "a mapping {...}"), (ListConfig, "a list")):
            if isinstance(was, kind):
                fits = isinstance(now, kind) and not (kind is int and isinstance(now, bool))
                if kind is float:
                    fits = isinstance(now, int | float) and not isinstance(now, bool)
                if not fits:
                    raise DemoError(
                        f"--set {override}: {key} takes {words} (the {method} run has {was})"
                    )
                break


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


def progress_callback(label: str, method: str, total_steps: int, lines: int = 10):
    """A Lightning callback that logs ``lines`` progress lines over a run: step, the method's loss
    and health signals (:data:`HEALTH_COLUMNS`, where the method logs them), elapsed seconds and
    an estimate of the seconds left (the demo turns Lightning's bar off: a bar redrawn in place
    is unreadable in a log file)."""

    from lightning.pytorch import Callback

    loss_key = LOSS_COLUMNS[method]
    every = max(1, total_steps // lines)

    class ProgressLog(Callback):
        def on_train_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % every and step != total_steps:
                return
            elapsed = time.perf_counter() - self.started
            loss = trainer.callback_metrics.get(loss_key)
            loss_text = f"{float(loss):.3f}" if loss is not None else "?"
            for name, key in HEALTH_COLUMNS.items():
                if key in trainer.callback_metrics:
                    loss_text += f", {name} {float(trainer.callback_metrics[key]):.3f}"
            logger.info(
                "%s: step %d/%d, loss %s, %.0f s, ~%.0f s left",
                label,
                step,
                total_steps,
                loss_text,
                elapsed,
                elapsed / step * (total_steps - step),
            )

    return ProgressLog()


def train_method(method, size, config_dir, data_root, run_dir, seed, workers, extra_overrides):
    """Pretrains one method; returns (backbone, result row, loss curve, composed config YAML,
    overrides)."""

    from omegaconf import OmegaConf

    from solo_stablerep.pretrain import run_pretrain

    overrides = method_overrides(method, size, data_root, run_dir, seed, workers) + list(
        extra_overrides
    )
    cfg = compose(config_dir, method, overrides)
    composed_yaml = OmegaConf.to_yaml(cfg)
    started = time.perf_counter()
    trainer = run_pretrain(cfg, [progress_callback(f"seed {seed} {method}", method, size.steps)])
    seconds = time.perf_counter() - started
    crops_per_step = cfg.optimizer.batch_size * cfg.data.num_large_crops
    row = {
        "method": method,
        "seed": seed,
        "train_seconds": seconds,
        "steps": trainer.global_step,
        "images_seen": trainer.global_step * crops_per_step,
    }
    return (
        trainer.lightning_module.backbone,
        row,
        read_loss_curve(run_dir, method),
        composed_yaml,
        overrides,
    )


def random_backbone(size, config_dir, data_root, run_dir, seed):
    """The floor (:data:`RANDOM_FLOOR`): StableRep's model as built before any training step."""

    from lightning.pytorch import seed_everything

    from solo_stablerep.pretrain import METHODS as SOLO_METHODS
    from solo_stablerep.pretrain import parse_pretrain_cfg

    cfg = parse_pretrain_cfg(
        compose(
            config_dir,
            "stablerep",
            method_overrides("stablerep", size, data_root, run_dir, seed, 0),
        )
    )
    seed_everything(seed, verbose=False)
    return SOLO_METHODS["stablerep"](cfg).backbone
