"""The shipped configs that claim the paper's recipe, checked against the StableRep authors' code.

Reference values come from google-research/syn-rep-learn, folder StableRep/ (cited per value):
the README's training command, ``main_stablerep.py`` and ``util/misc.py``. Every config is the
real file under scripts/pretrain/, composed by Hydra and parsed by the entry point's
``parse_pretrain_cfg`` exactly as a run would be.
"""

import math

import pytest
import torch
from helpers import (
    CPU_OVERRIDES,
    PRETRAIN_CONFIGS,
    SMALL_BATCH_OVERRIDE,
    compose_parsed_cfg,
    compose_raw_cfg,
    make_manifest_dataset,
    requires_solo,
)

pytestmark = requires_solo

# ---- the authors' values

AUTHORS_BLR = 2.0e-4  # README.md training command: --blr 2.0e-4
AUTHORS_BETAS = [0.9, 0.98]  # README.md: --beta1 0.9 --beta2 0.98
AUTHORS_WEIGHT_DECAY = 0.1  # README.md: --weight_decay 0.1
AUTHORS_TEMPERATURE = 0.1  # main_stablerep.py: --ssl-temp default 0.1
AUTHORS_PROJECTOR = (4096, 256)  # main_stablerep.py: --ssl-mlp-dim 4096, --ssl-emb-dim 256
# main_stablerep.py, the strong augmentation: RandomResizedCrop(224, scale=(0.08, 1)),
# RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(p=0.2),
# RandomApply([GaussianBlur([.1, 2.])], p=0.5), RandomHorizontalFlip() (p=0.5), nothing else
AUTHORS_AUGMENTATION = {
    "crop_size": 224,
    "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
    "color_jitter": {
        "prob": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
    },
    "grayscale": {"prob": 0.2},
    "gaussian_blur": {"prob": 0.5},
    "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0},
    "horizontal_flip": {"prob": 0.5},
}


def authors_lr(captions_per_step: int, n_img: int, num_crop: int) -> float:
    """main_stablerep.py: ``lr = blr * batch_size * world_size * n_img / 256``, then
    ``lr *= num_crop / 2`` ("previous line assumes num_crop=2")."""
    return AUTHORS_BLR * captions_per_step * n_img / 256 * num_crop / 2


def authors_schedule(
    step: int, steps_per_epoch: int, peak: float, warmup_epochs: float, epochs: int
) -> float:
    """util/misc.py ``adjust_learning_rate`` (min_lr 0), called with the fractional epoch of each
    step: linear warm-up from 0, then half-cycle cosine to 0."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return peak * epoch / warmup_epochs
    return (
        peak * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    )


def authors_exclude_from_decay(name: str, param: torch.Tensor) -> bool:
    """util/misc.py ``add_weight_decay``: biases, norms (by ndim and by name) get no decay."""
    return param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name


# ---- the configs that claim the paper's recipe: (folder, file, what an item's views are)

PAPER_CLAIMING = [
    ("synthetic-paper", "stablerep.yaml"),  # 6 images of a caption, one crop each
    ("synthetic-paper", "simclr.yaml"),  # two crops of one image of a caption
    ("synthetic", "stablerep.yaml"),
    ("synthetic", "stablerep_pp.yaml"),
    ("custom", "stablerep.yaml"),  # 6 crops of one image of a folder
]


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    make_manifest_dataset(root, num_captions=40, images_per_caption=6, class_names=["a", "b"])
    return root


def parsed(folder: str, name: str, train_path, overrides=()):
    return compose_parsed_cfg(
        PRETRAIN_CONFIGS / folder, name, [f"data.train_path={train_path}", *overrides]
    )


def views_of_an_item(cfg):
    """(n_img, num_crop) in the authors' terms: images of a caption, crops of each image."""
    num_crop = sum(aug.num_crops for aug in cfg.augmentations)
    n_img = cfg.data.synthetic.n_img if cfg.data.dataset == "synthetic" else 1
    assert cfg.data.num_large_crops == n_img * num_crop
    return n_img, num_crop


@pytest.mark.parametrize("folder, name", PAPER_CLAIMING)
def test_effective_lr_is_the_authors_formula_for_the_configs_own_batch(
    folder, name, manifest_root, image_folder
):
    cfg = parsed(folder, name, manifest_root if folder != "custom" else image_folder)
    # solo-learn's parse_cfg has scaled optimizer.lr: this is the lr AdamW is given
    captions_per_step = cfg.optimizer.batch_size * len(cfg.devices) * cfg.num_nodes
    n_img, num_crop = views_of_an_item(cfg)
    assert cfg.optimizer.lr == pytest.approx(
        authors_lr(captions_per_step, n_img, num_crop), rel=1e-12
    )


@pytest.mark.parametrize("name", ["stablerep.yaml", "simclr.yaml"])
def test_paper_scale_runs_the_authors_batch_and_lr(name, manifest_root):
    cfg = parsed("synthetic-paper", name, manifest_root)
    # README.md: torchrun --nproc_per_node=8 --nnodes=4 ... --batch_size 43 --n_img 6
    assert (len(cfg.devices), cfg.num_nodes) == (8, 4)
    images_per_step = cfg.optimizer.batch_size * cfg.data.num_large_crops * 32
    assert images_per_step == 43 * 6 * 32 == 8256
    # the value main_stablerep.py prints for that command ("lr: 3.225e-03")
    assert cfg.optimizer.lr == pytest.approx(3.225e-3, rel=1e-12)


@pytest.mark.parametrize("folder, name", PAPER_CLAIMING)
def test_optimiser_schedule_and_augmentations_are_the_authors(
    folder, name, manifest_root, image_folder
):
    from solo.methods import METHODS

    cfg = parsed(folder, name, manifest_root if folder != "custom" else image_folder)
    # the defaults the method fills in when it is built (solo-learn's scheduler defaults)
    cfg = METHODS[cfg.method].add_and_assert_specific_cfg(cfg)
    assert cfg.optimizer.name == "adamw"
    assert list(cfg.optimizer.kwargs.betas) == AUTHORS_BETAS
    assert cfg.optimizer.weight_decay == AUTHORS_WEIGHT_DECAY
    assert cfg.optimizer.exclude_bias_n_norm_wd is True
    assert cfg.scheduler.name == "warmup_cosine" and cfg.scheduler.interval == "step"
    assert cfg.scheduler.warmup_start_lr == 0.0  # solo-learn's default would be 3e-5
    assert cfg.scheduler.min_lr == 0.0  # main_stablerep.py: --min_lr default 0
    assert cfg.method_kwargs.temperature == AUTHORS_TEMPERATURE
    assert (
        cfg.method_kwargs.proj_hidden_dim,
        cfg.method_kwargs.proj_output_dim,
    ) == AUTHORS_PROJECTOR
    for aug in cfg.augmentations:
        for key, expected in AUTHORS_AUGMENTATION.items():
            actual = (
                aug[key] if not isinstance(expected, dict) else {k: aug[key][k] for k in expected}
            )
            assert actual == expected, f"{folder}/{name}: augmentations.{key}"


def test_paper_scale_schedule_model_and_data_are_the_authors(manifest_root):
    cfg = parsed("synthetic-paper", "stablerep.yaml", manifest_root)
    # README.md: --epochs 15 --warmup_epochs 0.5 (cc12m 1x), --model base,
    # --n_img 6 --downsample --downsample_prob 0.05 --down_res 64 128
    assert (cfg.max_epochs, cfg.scheduler.warmup_epochs) == (15, 0.5)
    assert cfg.backbone.name == "vit_base" and cfg.method_kwargs.proj_num_layers == 3
    assert cfg.data.synthetic.n_img == 6 and num_crops(cfg) == 1
    assert cfg.data.synthetic.downsample.prob == 0.05
    assert sorted(cfg.data.synthetic.downsample.sizes) == [64, 128]
    # main_stablerep.py trains under torch.cuda.amp.autocast() (fp16) with a GradScaler;
    # models/StableRep.py uses SyncBatchNorm in the projector
    assert cfg.precision == "16-mixed" and cfg.sync_batchnorm is True


def num_crops(cfg) -> int:
    return sum(aug.num_crops for aug in cfg.augmentations)


# ---- what the optimiser really gets: weight decay per parameter, lr per step

# the real paper config, shrunk to a CPU run (ViT-Tiny at 32 px keeps the ViT's parameter kinds:
# patch embedding, cls token, position embedding, LayerNorms, biases)
TINY_CPU = CPU_OVERRIDES + [
    SMALL_BATCH_OVERRIDE,
    "backbone.name=vit_tiny",
    "+backbone.kwargs.img_size=32",
    "augmentations.0.crop_size=32",
    "data.format=image_folder",
    "++num_nodes=1",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "auto_resume.enabled=False",
    "checkpoint.enabled=False",
    "max_epochs=2",
]


def decay_by_name(model, optimizer):
    """parameter name -> the weight decay its optimiser group applies."""
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in decay, f"{names[id(p)]} is in two groups"
            decay[names[id(p)]] = group["weight_decay"]
    return decay


def check_decay(model, decay):
    params = dict(model.named_parameters())
    assert set(decay) == {
        n for n, p in params.items() if p.requires_grad
    }  # every parameter trained once
    for name, wd in decay.items():
        if name.startswith("classifier."):
            continue  # solo-learn's online linear probe (not in the authors' model): never decayed
        expected = 0.0 if params[name].ndim < 2 else AUTHORS_WEIGHT_DECAY
        assert wd == expected, f"{name} (shape {tuple(params[name].shape)}) has weight decay {wd}"
        # the same split as the authors' name-based rule
        assert (wd == 0.0) == authors_exclude_from_decay(name, params[name]), name


@pytest.mark.slow
def test_paper_config_run_decays_only_matrices_and_follows_the_authors_schedule(
    manifest_root, tmp_path, monkeypatch
):
    from solo_stablerep.pretrain import run_pretrain

    monkeypatch.chdir(tmp_path)
    cfg = compose_raw_cfg(
        PRETRAIN_CONFIGS / "synthetic-paper",
        "stablerep.yaml",
        [f"data.train_path={manifest_root}", *TINY_CPU],
    )
    trainer = run_pretrain(cfg)  # two short epochs through the entry point
    model = trainer.lightning_module
    steps_per_epoch = 40 // 4
    assert trainer.global_step == 2 * steps_per_epoch

    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(list(group["betas"]) == AUTHORS_BETAS for group in optimizer.param_groups)
    decay = decay_by_name(model, optimizer)
    check_decay(model, decay)
    assert (
        decay["backbone.pos_embed"]
        == decay["backbone.patch_embed.proj.weight"]
        == AUTHORS_WEIGHT_DECAY
    )
    assert decay["backbone.norm.weight"] == decay["backbone.blocks.0.attn.qkv.bias"] == 0.0

    # a fresh optimiser and scheduler from the same configuration, stepped through the run
    [optimizer], [scheduler] = model.configure_optimizers()
    group = next(g for g in optimizer.param_groups if g["name"] == "backbone")
    peak = model.lr  # the scaled lr: 6e-4 x 4 captions / 256
    assert peak == pytest.approx(authors_lr(4, 6, 1), rel=1e-12)
    lrs = []
    for _ in range(trainer.global_step):
        lrs.append(group["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    warmup_steps = 0.5 * steps_per_epoch
    assert lrs[0] == 0.0  # warm-up from 0 (solo-learn's default starts at 3e-5)
    assert max(lrs) == pytest.approx(peak, rel=1e-9)
    assert lrs[-1] < 0.03 * peak  # cosine to 0 (the last step is one short of the end)
    # solo-learn reaches the peak one step earlier than the authors (over warmup_steps - 1 steps):
    # the schedules differ by at most peak / warmup_steps, 0.03 % at the paper's 3,600 warm-up steps
    for step, lr in enumerate(lrs):
        expected = authors_schedule(step, steps_per_epoch, peak, 0.5, 2)
        assert lr == pytest.approx(expected, abs=peak / warmup_steps + 1e-12), step


def test_stablerep_pp_groups_exclude_the_logit_scale_and_every_vector(manifest_root):
    from solo.methods import METHODS

    tiny_text = [
        "method_kwargs.embed_dim=16",
        "method_kwargs.text_width=32",
        "method_kwargs.text_layers=1",
        "method_kwargs.text_heads=2",
        "method_kwargs.context_length=12",
        "scheduler.name=none",  # configure_optimizers then returns the optimiser alone
    ]
    overrides = [o for o in TINY_CPU if not o.startswith("max_epochs")] + tiny_text
    cfg = parsed("synthetic", "stablerep_pp.yaml", manifest_root, overrides)
    model = METHODS["stablerep_pp"](cfg)
    optimizer = model.configure_optimizers()  # solo-learn's BaseMethod, with the config's flag
    decay = decay_by_name(model, optimizer)
    check_decay(model, decay)
    assert decay["logit_scale"] == 0.0
    # 2-D text-tower parameters are decayed, as the authors' add_weight_decay does
    assert (
        decay["text_tower.positional_embedding"]
        == decay["text_tower.token_embedding.weight"]
        == 0.1
    )
