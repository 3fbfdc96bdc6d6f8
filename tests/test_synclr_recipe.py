"""The shipped paper-scale SynCLR config against the recipe it claims (docs/synclr.md).

Reference values: the SynCLR paper (Tian, Fan, Chen, Katabi, Krishnan, Isola, CVPR 2024, arXiv
2312.17742), Table 12 (ViT-B/16 pre-training) and its method section, cited per value. The
config is the real file under scripts/pretrain/synthetic-paper/, composed by Hydra and parsed by
the entry point's ``parse_pretrain_cfg`` exactly as a run would be.
"""

import pytest
from helpers import PRETRAIN_CONFIGS, compose_parsed_cfg, make_manifest_dataset, requires_solo

pytestmark = requires_solo

# ---- the paper's values
PAPER_BETAS = [0.9, 0.999]  # Table 12: AdamW (0.9, 0.999)
PAPER_LR = 2e-3  # Table 12: peak lr 2e-3 ...
PAPER_IMAGES_PER_STEP = 8192  # ... at a batch of 8,192 images
PAPER_IMAGES_PER_CAPTION = 4  # 4 images generated per caption
PAPER_WEIGHT_DECAY = (0.04, 0.2)  # Table 12: weight decay 0.04 -> 0.2, cosine
PAPER_WARMUP_STEPS = 80_000  # Table 12: warm-up 80k steps ...
PAPER_STEPS = 500_000  # ... of 500k
PAPER_CAPTIONS = 150_000_000  # SynCaps-150M
PAPER_EMA = (0.994, 1.0)  # EMA momentum 0.994 -> 1, cosine
PAPER_TEMPERATURE = 0.08
PAPER_LOCAL_CROPS = 4  # 1 global (224 px) + 4 local (96 px) crops per image
PAPER_PROTOTYPES = 65536  # iBOT head
PAPER_MASKING = (0.5, 0.5)  # 50 % of the images, 50 % of their patches
# the authors' crops (SynCLR/train_pytorch/main_mask_synclr.py defaults): scales and sizes
GLOBAL_CROP = {"crop_size": 224, "rrc": {"crop_min_scale": 0.32, "crop_max_scale": 1.0}}
LOCAL_CROP = {"crop_size": 96, "rrc": {"crop_min_scale": 0.08, "crop_max_scale": 0.32}}
# where the paper is silent, the authors' PyTorch command (SynCLR/train_pytorch/README.md) and
# main_mask_synclr.py's defaults: iBOT teacher temperature --warmup_teacher_temp 0.04 ->
# --teacher_temp 0.07 over --warmup_teacher_temp_epochs 1.0; --contrast_mlp_norm ln
AUTHORS_TEACHER_TEMPERATURE = (0.04, 0.07, 1.0)
AUTHORS_HEAD_NORM = "ln"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from solo.methods import METHODS

    root = tmp_path_factory.mktemp("manifest")
    make_manifest_dataset(root, num_captions=8, images_per_caption=4)
    cfg = compose_parsed_cfg(
        PRETRAIN_CONFIGS / "synthetic-paper", "synclr.yaml", [f"data.train_path={root}"]
    )
    return METHODS["synclr"].add_and_assert_specific_cfg(cfg)


def test_batch_and_lr_are_the_papers(cfg):
    captions_per_step = cfg.optimizer.batch_size * len(cfg.devices) * cfg.num_nodes
    assert captions_per_step * cfg.data.synthetic.n_img == PAPER_IMAGES_PER_STEP
    assert cfg.data.synthetic.n_img == PAPER_IMAGES_PER_CAPTION
    # solo-learn's parse_cfg has scaled optimizer.lr by captions per step / 256: what AdamW gets
    assert cfg.optimizer.lr == pytest.approx(PAPER_LR, rel=1e-12)


def test_optimiser_and_schedules_are_the_papers(cfg):
    assert cfg.optimizer.name == "adamw" and list(cfg.optimizer.kwargs.betas) == PAPER_BETAS
    assert (cfg.optimizer.weight_decay, cfg.method_kwargs.weight_decay_end) == PAPER_WEIGHT_DECAY
    assert cfg.optimizer.exclude_bias_n_norm_wd is True
    assert cfg.scheduler.name == "warmup_cosine" and cfg.scheduler.interval == "step"
    assert cfg.scheduler.warmup_start_lr == 0.0 and cfg.scheduler.min_lr == 0.0
    steps_per_epoch = PAPER_CAPTIONS / (cfg.optimizer.batch_size * len(cfg.devices) * cfg.num_nodes)
    assert cfg.scheduler.warmup_epochs * steps_per_epoch == pytest.approx(
        PAPER_WARMUP_STEPS, rel=1e-3
    )
    # whole epochs: 7 x 73,242 steps is 2.5 % more than the paper's 500k
    assert cfg.max_epochs * steps_per_epoch == pytest.approx(PAPER_STEPS, rel=0.03)
    assert (cfg.momentum.base_tau, cfg.momentum.final_tau) == PAPER_EMA


def test_loss_crops_and_ibot_are_the_papers(cfg):
    kwargs = cfg.method_kwargs
    assert cfg.backbone.name == "vit_base"
    assert kwargs.temperature == PAPER_TEMPERATURE and kwargs.avoid_local_global_same is True
    assert kwargs.num_local_crops == PAPER_LOCAL_CROPS
    assert cfg.data.num_large_crops == PAPER_IMAGES_PER_CAPTION
    assert cfg.data.num_small_crops == PAPER_IMAGES_PER_CAPTION * PAPER_LOCAL_CROPS
    assert kwargs.ibot_weight > 0 and kwargs.ibot_num_prototypes == PAPER_PROTOTYPES
    assert (kwargs.ibot_mask_probability, kwargs.ibot_mask_ratio) == PAPER_MASKING
    assert (
        kwargs.ibot_warmup_teacher_temperature,
        kwargs.ibot_teacher_temperature,
        kwargs.ibot_warmup_teacher_temperature_epochs,
    ) == AUTHORS_TEACHER_TEMPERATURE
    assert kwargs.head_norm == AUTHORS_HEAD_NORM
    global_aug, local_aug = cfg.augmentations
    for aug, expected in ((global_aug, GLOBAL_CROP), (local_aug, LOCAL_CROP)):
        assert aug.crop_size == expected["crop_size"]
        assert {k: aug.rrc[k] for k in expected["rrc"]} == expected["rrc"]
    assert (global_aug.num_crops, local_aug.num_crops) == (1, PAPER_LOCAL_CROPS)
    assert cfg.backbone.kwargs.dynamic_img_size  # the 96 px local crops through a 224 px ViT
