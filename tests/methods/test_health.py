"""The collapse and health signals every method logs (solo_stablerep.methods.health)."""

import math

import pytest
import torch
from helpers import PRETRAIN_CONFIGS, SMOKE_OVERRIDES, compose_parsed_cfg, requires_solo

from solo_stablerep.methods.health import embedding_std, mean_cosine


def test_embedding_std_is_zero_on_a_collapsed_batch_at_any_scale():
    row = torch.randn(1, 32)
    collapsed = row.repeat(64, 1) * torch.rand(64, 1).add(0.5)  # one direction, any length
    assert embedding_std(collapsed).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("dim", [16, 128])
def test_embedding_std_of_random_unit_vectors_is_one_over_sqrt_dim(dim):
    g = torch.Generator().manual_seed(dim)
    z = torch.randn(4096, dim, generator=g) * 3.0  # the norm does not matter
    assert embedding_std(z).item() == pytest.approx(1 / math.sqrt(dim), rel=0.03)


def test_embedding_std_is_detached_and_computed_in_float32_for_half_inputs():
    z = torch.randn(32, 8, requires_grad=True)
    assert not embedding_std(z).requires_grad
    assert embedding_std(z.detach().bfloat16()).dtype == torch.float32


def test_mean_cosine_is_one_when_aligned_minus_one_when_opposite_and_near_zero_at_random():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 64, generator=g)
    assert mean_cosine(a, 2 * a).item() == pytest.approx(1.0, abs=1e-6)
    assert mean_cosine(a, -a).item() == pytest.approx(-1.0, abs=1e-6)
    assert abs(mean_cosine(a, torch.randn(2048, 64, generator=g)).item()) < 0.02


SYNCLR_TINY = [
    "augmentations.0.crop_size=32",
    "augmentations.1.crop_size=16",
    "method_kwargs.ibot_weight=0",
    "+method_kwargs.pred_hidden_dim=32",
]


@requires_solo
@pytest.mark.slow
@pytest.mark.parametrize(
    "method, extra, logged",
    [
        ("stablerep", ["augmentations.0.crop_size=32"], ["train_embedding_std"]),
        (
            "synclr",
            SYNCLR_TINY,
            [
                "train_embedding_std",
                "train_teacher_embedding_std",
                "train_student_teacher_cosine",
            ],
        ),
    ],
)
def test_two_training_steps_log_the_health_signals(
    image_folder, tmp_path, monkeypatch, method, extra, logged
):
    from solo.methods import METHODS

    from solo_stablerep.pretrain import build_trainer, prepare_train_data

    monkeypatch.chdir(tmp_path)
    overrides = [f"data.train_path={image_folder}", "checkpoint.enabled=False", *extra]
    cfg = compose_parsed_cfg(
        PRETRAIN_CONFIGS / "custom", f"{method}.yaml", SMOKE_OVERRIDES + overrides
    )
    cfg.max_steps = 2
    cfg.log_every_n_steps = 1
    model = METHODS[method](cfg)
    trainer = build_trainer(cfg, model)
    trainer.fit(model, prepare_train_data(cfg))
    assert trainer.global_step == 2
    rows = cfg.optimizer.batch_size * cfg.data.num_large_crops
    dim = cfg.method_kwargs.proj_output_dim
    for name in logged:
        for key in (f"{name}_step", f"{name}_epoch"):
            assert key in trainer.callback_metrics, key
        value = trainer.callback_metrics[f"{name}_step"].item()
        if "std" in name:  # unit vectors: the mean of the stds is at most sqrt(1 / d) (Jensen)
            assert 0 < value <= math.sqrt(rows / (rows - 1) / dim) + 1e-6, (name, value)
        else:
            assert -1 <= value <= 1, (name, value)
