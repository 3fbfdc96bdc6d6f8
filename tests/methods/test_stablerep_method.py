"""StableRep as a solo-learn method, with the real solo-learn (skipped, with the reason,
without)."""

import copy
import sys

import pytest
import torch
from helpers import (
    PRETRAIN_CONFIGS,
    SMOKE_OVERRIDES,
    compose_parsed_cfg,
    crop_overrides,
    requires_solo,
    run_pretrain_command,
    write_image_folder,
)

from solo_stablerep.errors import INPUT_ERROR_EXIT

pytestmark = requires_solo

CUSTOM = PRETRAIN_CONFIGS / "custom"


def stablerep_cfg(train_path, *extra, num_views=4):
    overrides = (
        SMOKE_OVERRIDES
        + crop_overrides(1)
        + [
            f"data.train_path={train_path}",
            f"augmentations.0.num_crops={num_views}",
            "checkpoint.enabled=False",
            *extra,
        ]
    )
    return compose_parsed_cfg(CUSTOM, "stablerep.yaml", overrides)


def test_import_registers_stablerep_once():
    import solo.methods

    import solo_stablerep
    from solo_stablerep.methods import StableRep

    assert solo.methods.METHODS["stablerep"] is StableRep
    before = dict(solo.methods.METHODS)
    solo_stablerep.register_methods()
    assert solo.methods.METHODS == before


def test_model_builds_from_the_shipped_config(image_folder):
    from solo.methods import METHODS

    cfg = stablerep_cfg(image_folder, num_views=6)
    assert cfg.data.num_large_crops == 6
    assert cfg.optimizer.name == "adamw" and list(cfg.optimizer.kwargs.betas) == [0.9, 0.98]
    assert cfg.method_kwargs.temperature == 0.1
    model = METHODS["stablerep"](cfg)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model.projector if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (512, 32),
        (32, 32),
        (32, 16),
    ]
    assert len(norms) == 2
    assert {"backbone", "classifier", "projector"} <= {g["name"] for g in model.learnable_params}


def test_projector_batch_norm_sees_one_view_at_a_time(image_folder):
    from solo.methods import METHODS

    cfg = stablerep_cfg(image_folder, num_views=3)
    model = METHODS["stablerep"](cfg)
    seen_batch_sizes = []
    model.projector[1].register_forward_hook(lambda m, i, o: seen_batch_sizes.append(i[0].shape[0]))
    model.log = model.log_dict = lambda *a, **k: None  # no Trainer attached
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    model.training_step([torch.arange(4), views, torch.zeros(4, dtype=torch.long)], 0)
    assert seen_batch_sizes == [4, 4, 4]


def grouped_and_per_view_models(image_folder, group):
    """Two StableRep models with the same weights, 4 views forwarded ``group`` at a time by one
    and one at a time (solo-learn's forward) by the other, and a batch of 4 items."""

    from solo.methods import METHODS

    per_view = METHODS["stablerep"](stablerep_cfg(image_folder))
    cfg = stablerep_cfg(image_folder, f"++method_kwargs.views_per_backbone_call={group}")
    grouped = METHODS["stablerep"](cfg)
    grouped.load_state_dict(per_view.state_dict())
    for model in (per_view, grouped):
        model.log = model.log_dict = lambda *a, **k: None  # no Trainer attached
    torch.manual_seed(0)
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    return per_view, grouped, [torch.arange(4), views, torch.arange(4) % 2]


@pytest.mark.parametrize("group", [1, 2, 4])
def test_grouped_backbone_calls_match_per_view_calls_where_bn_is_frozen(image_folder, group):
    from solo.methods.base import BaseMethod

    per_view, grouped, batch = grouped_and_per_view_models(image_folder, group)
    for model in (per_view, grouped):
        # the backbone's BN in eval mode (running statistics): grouping changes nothing else;
        # the projector's BN stays in train mode, so it must still see one view at a time
        model.train()
        model.backbone.eval()
    expected = BaseMethod.training_step(per_view, batch, 0)
    got = grouped.multi_view_step(batch)
    # float32 convolutions over 8 or 16 rows instead of 4 may sum in another order
    for key in ("feats", "logits", "z"):
        assert len(got[key]) == 4
        for g, e in zip(got[key], expected[key], strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    for key in ("loss", "acc1"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        grouped.training_step(batch, 0), per_view.training_step(batch, 0), rtol=1e-4, atol=1e-5
    )


def test_grouped_step_calls_the_backbone_per_group_and_the_projector_per_view(image_folder):
    _, grouped, batch = grouped_and_per_view_models(image_folder, 2)
    backbone_rows, projector_rows = [], []
    grouped.backbone.register_forward_hook(lambda m, i, o: backbone_rows.append(i[0].shape[0]))
    grouped.projector[1].register_forward_hook(lambda m, i, o: projector_rows.append(len(i[0])))
    optimizer = torch.optim.SGD(grouped.parameters(), lr=0.1)
    before = grouped.backbone.conv1.weight.detach().clone()
    loss = grouped.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert backbone_rows == [8, 8] and projector_rows == [4, 4, 4, 4]
    assert torch.isfinite(loss)
    assert not torch.equal(before, grouped.backbone.conv1.weight)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["++method_kwargs.views_per_backbone_call=3"],
            "divides both the 4 large crops and the 0 small crops, got 3",
        ),
        (
            ["++method_kwargs.views_per_backbone_call=0"],
            "views_per_backbone_call must be an integer >= 1, got 0",
        ),
    ],
)
def test_bad_views_per_backbone_call_is_named(image_folder, overrides, message):
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    with pytest.raises(InputError, match=message) as error:
        METHODS["stablerep"](stablerep_cfg(image_folder, *overrides))
    assert "\n" not in str(error.value)


def fit_tiny(cfg, steps=3):
    from solo.methods import METHODS

    from solo_stablerep.pretrain import build_trainer, prepare_train_data

    cfg.max_steps = steps
    cfg.log_every_n_steps = 1
    model = METHODS[cfg.method](cfg)
    initial = copy.deepcopy(model.backbone.state_dict())
    trainer = build_trainer(cfg, model)
    trainer.fit(model, prepare_train_data(cfg))
    changed = any(
        not torch.equal(initial[k], v)
        for k, v in model.backbone.state_dict().items()
        if v.dtype.is_floating_point
    )
    return trainer, changed


@pytest.mark.slow
def test_fit_with_labels_trains_and_logs_finite_metrics(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer, changed = fit_tiny(stablerep_cfg(image_folder, num_views=5))
    metrics = trainer.callback_metrics
    assert changed
    assert trainer.global_step == 3
    for key in ("train_stablerep_loss", "train_class_loss", "train_acc1"):
        assert torch.isfinite(metrics[key]), key
    # 5 views of a 4-item batch: the loss of random features is about log(19) > 0
    assert metrics["train_stablerep_loss"] > 0.5


@pytest.mark.slow
def test_fit_without_labels_is_finite_and_logs_no_accuracy(tmp_path, monkeypatch):

    flat = tmp_path / "flat"
    write_image_folder(tmp_path / "nested", num_classes=1)
    (tmp_path / "nested" / "class0").rename(flat)  # solo's no_labels reads a flat folder
    monkeypatch.chdir(tmp_path)
    cfg = stablerep_cfg(flat, "data.no_labels=True", num_views=4)
    trainer, changed = fit_tiny(cfg)
    metrics = trainer.callback_metrics
    assert changed
    assert torch.isfinite(metrics["train_stablerep_loss"])
    assert all(torch.isfinite(v) for v in metrics.values())
    assert "train_acc1" not in metrics and "train_class_loss" not in metrics


def test_unlabelled_batch_gives_finite_loss_where_solo_gives_nan(image_folder):
    from solo.methods import METHODS

    cfg = stablerep_cfg(image_folder)
    model = METHODS["stablerep"](cfg)
    logged = {}
    model.log = lambda k, v, **_: logged.__setitem__(k, v)
    model.log_dict = lambda d, **_: logged.update(d)
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    loss = model.training_step([torch.arange(4), views, torch.full((4,), -1)], 0)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logged.values())
    # solo-learn's own classifier step is NaN on the same batch
    solo_step = METHODS["simclr"].base_training_step(model, views[0], torch.full((4,), -1))
    assert torch.isnan(solo_step["loss"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method_kwargs.temperature=???"], "method_kwargs.temperature is missing"),
        (["+method_kwargs.temprature=0.2"], "unknown method_kwargs.temprature"),
        (["method_kwargs.temperature=0"], "method_kwargs.temperature must be > 0"),
    ],
)
def test_bad_method_kwargs_are_named(image_folder, overrides, message):
    from solo.methods import METHODS

    cfg = stablerep_cfg(image_folder, *overrides)
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        METHODS["stablerep"](cfg)


def test_one_view_is_refused(image_folder):
    from solo.methods import METHODS

    cfg = stablerep_cfg(image_folder, num_views=1)
    with pytest.raises(ValueError, match="at least 2 views"):
        METHODS["stablerep"](cfg)


def test_unknown_method_is_named(image_folder):
    with pytest.raises(ValueError, match="unknown method 'stablrep'"):
        stablerep_cfg(image_folder, "method=stablrep")


def test_two_view_methods_refuse_six_crops(image_folder):
    with pytest.raises(ValueError, match="simclr needs exactly 2 large crops, got 6"):
        stablerep_cfg(image_folder, "method=simclr", num_views=6)


def run_entry_point(command, config_name, cwd, *overrides):
    return run_pretrain_command(command, CUSTOM, config_name, cwd, *overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, config_name, num_pipelines",
    [
        (["solo-stablerep-pretrain"], "stablerep.yaml", 1),
        ([sys.executable, "-m", "solo_stablerep.pretrain"], "simclr.yaml", 1),
    ],
    ids=["stablerep-console-script", "simclr-module"],
)
def test_entry_point_runs_one_short_epoch(
    image_folder, tmp_path, command, config_name, num_pipelines
):
    result = run_entry_point(
        command,
        config_name,
        tmp_path,
        *crop_overrides(num_pipelines),
        f"data.train_path={image_folder}",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        "+limit_train_batches=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    method = config_name.removesuffix(".yaml")
    checkpoints = list((tmp_path / "ckpt" / method).rglob("*.ckpt"))
    assert len(checkpoints) == 1, result.stdout[-2000:]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 2


def test_entry_point_reports_a_bad_method_in_one_line(image_folder, tmp_path):
    result = run_entry_point(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        "stablerep.yaml",
        tmp_path,
        f"data.train_path={image_folder}",
        "method=nope",
    )
    assert result.returncode == INPUT_ERROR_EXIT
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("solo-stablerep-pretrain: error: unknown method 'nope'")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_entry_point_trains_with_ddp_on_two_cpu_processes(image_folder, tmp_path):
    # Lightning re-launches the command for rank 1; the loss gathers across both ranks.
    result = run_entry_point(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        "stablerep.yaml",
        tmp_path,
        *crop_overrides(1),
        f"data.train_path={image_folder}",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        "devices=2",
        "strategy=ddp",
        "+max_steps=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "ckpt" / "stablerep").rglob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
