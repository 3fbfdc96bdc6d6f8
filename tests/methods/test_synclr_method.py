"""SynCLR as a solo-learn method: its teacher, its loss wiring, iBOT, the queue and bad input."""

import copy
import re

import pytest
import torch
from helpers import (
    PRETRAIN_CONFIGS,
    SMOKE_OVERRIDES,
    compose_parsed_cfg,
    make_manifest_dataset,
    requires_solo,
)

pytestmark = requires_solo

CUSTOM = PRETRAIN_CONFIGS / "custom"
TINY = [
    "augmentations.0.crop_size=32",
    "augmentations.1.crop_size=16",
    "checkpoint.enabled=False",
    "method_kwargs.ibot_weight=0",
    "+method_kwargs.pred_hidden_dim=32",
]
TINY_IBOT = [
    "backbone.name=vit_tiny",
    "+backbone.kwargs.img_size=32",
    "method_kwargs.ibot_weight=1.0",
    "+method_kwargs.ibot_num_prototypes=64",
    "+method_kwargs.ibot_head_hidden_dim=32",
    "+method_kwargs.ibot_head_bottleneck_dim=16",
]


def synclr_cfg(train_path, *extra):
    overrides = SMOKE_OVERRIDES + TINY + [f"data.train_path={train_path}", *extra]
    return compose_parsed_cfg(CUSTOM, "synclr.yaml", overrides)


def build(cfg):
    from solo.methods import METHODS

    model = METHODS["synclr"](cfg)
    model.log = model.log_dict = lambda *a, **k: None  # no Trainer attached
    return model


def custom_batch(seed=0, items=4):
    """The custom config's views: 2 global crops (32 px), 8 local crops (16 px)."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(items, 3, 32, 32, generator=g) for _ in range(2)]
    views += [torch.randn(items, 3, 16, 16, generator=g) for _ in range(8)]
    return [torch.arange(items), views, torch.zeros(items, dtype=torch.long)]


def test_registered_with_solo_learns_momentum_conventions(image_folder):
    import solo.methods
    from solo.methods.base import BaseMomentumMethod

    from solo_stablerep.methods import SynCLR
    from solo_stablerep.methods.synclr import FusedMomentumUpdater

    assert solo.methods.METHODS["synclr"] is SynCLR
    cfg = synclr_cfg(image_folder)
    assert (cfg.momentum.base_tau, cfg.momentum.final_tau) == (0.994, 1.0)
    model = build(cfg)
    assert isinstance(model, BaseMomentumMethod)
    assert isinstance(model.momentum_updater, FusedMomentumUpdater)
    assert model.momentum_updater.base_tau == 0.994 and model.momentum_updater.final_tau == 1.0
    pairs = {id(s): t for s, t in model.momentum_pairs}
    assert pairs[id(model.backbone)] is model.momentum_backbone
    assert pairs[id(model.projector)] is model.momentum_projector
    # the teacher starts as a copy of the student and is never trained by the optimiser
    for student, teacher in model.momentum_pairs:
        for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
            assert torch.equal(s, t) and not t.requires_grad
    learnable = {id(p) for g in model.learnable_params for p in g["params"]}
    assert not learnable & {id(p) for p in model.momentum_projector.parameters()}
    assert model.temperature == 0.08


def test_teacher_gets_no_gradient_and_the_loss_is_the_momentum_loss(image_folder):
    from solo_stablerep.losses import momentum_multi_positive_loss

    model = build(synclr_cfg(image_folder))
    batch = custom_batch()
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("momentum_"))
    assert all(p.grad is not None for g in model.learnable_params for p in g["params"])

    # the same step by hand: queries of all 10 views against the teacher keys of the 2 global ones
    torch.manual_seed(0)
    model.zero_grad()
    with torch.no_grad():
        _, views, targets = batch
        q = [model(v)["q"] for v in views[:2]] + [
            model.multicrop_forward(v)["q"] for v in views[2:]
        ]
        # the teacher takes both global crops in one call (its BN statistics over both)
        k = [model.momentum_forward(torch.cat(views[:2]))["z"]]
        # local view s belongs to global view s // 4; rows are items
        owners = torch.tensor([(s // 4) * 4 + b for s in range(8) for b in range(4)])
        expected = momentum_multi_positive_loss(
            torch.cat(q[:2]),
            torch.cat(k),
            torch.arange(4).repeat(2),
            torch.cat(q[2:]),
            owners,
            0.08,
        )
        classifier = model.classifier_outputs(model(views[0]), targets)["loss"]
        classifier = (classifier + model.classifier_outputs(model(views[1]), targets)["loss"]) / 2
    assert loss.item() == pytest.approx((expected + classifier).item(), rel=1e-5)


@pytest.mark.slow
def test_teacher_follows_the_student_by_ema_after_a_step(image_folder, tmp_path, monkeypatch):
    from lightning.pytorch import Callback

    from solo_stablerep.pretrain import build_trainer, prepare_train_data

    monkeypatch.chdir(tmp_path)
    # the warm-up starts at lr 0, and a student that does not move leaves the teacher in place
    cfg = synclr_cfg(image_folder, "scheduler.warmup_start_lr=1e-3")
    cfg.max_steps = 1
    from solo.methods import METHODS

    model = METHODS["synclr"](cfg)
    teacher_before = copy.deepcopy(model.momentum_projector.state_dict())
    seen = {}

    class AfterOptimiserStep(Callback):
        # callbacks' on_train_batch_end run before the module's, where the EMA update happens
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen["student"] = copy.deepcopy(pl_module.projector.state_dict())
            seen["teacher"] = copy.deepcopy(pl_module.momentum_projector.state_dict())

    trainer = build_trainer(cfg, model, callbacks=[AfterOptimiserStep()])
    trainer.fit(model, prepare_train_data(cfg))
    assert trainer.global_step == 1
    tau = 0.994
    for name, after in model.momentum_projector.state_dict().items():
        if "running" in name or "num_batches" in name:
            continue  # BN statistics are buffers: solo-learn's EMA moves parameters only
        assert torch.equal(seen["teacher"][name], teacher_before[name]), name  # the step left it
        expected = tau * teacher_before[name] + (1 - tau) * seen["student"][name]
        torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(seen["student"]["0.weight"], teacher_before["0.weight"])
    assert not torch.equal(model.momentum_projector[0].weight, teacher_before["0.weight"])


def vit_synclr_cfg(image_folder, ibot_weight, *extra):
    return synclr_cfg(image_folder, *TINY_IBOT, f"method_kwargs.ibot_weight={ibot_weight}", *extra)


def labelled_batch(classes, seed=0, items=4):
    batch = custom_batch(seed, items)
    batch[2] = torch.arange(items) % classes
    return batch


@pytest.mark.parametrize("ibot_weight", [0.0, 1.0], ids=["no-ibot", "ibot"])
def test_one_teacher_call_gives_solo_learns_per_crop_outputs_on_a_vit(tmp_path, ibot_weight):
    from helpers import write_image_folder
    from solo.methods.base import BaseMomentumMethod

    # 5 classes: solo-learn's momentum classifier takes the top-5 accuracy
    folder = write_image_folder(tmp_path / "five", num_classes=5, per_class=1)
    model = build(vit_synclr_cfg(folder, ibot_weight, "++momentum.classifier=True"))
    assert model.momentum_classifier is not None
    batch = labelled_batch(5)
    calls = []
    model.momentum_backbone.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(0)
    expected = BaseMomentumMethod.training_step(model, batch, 0)  # a teacher call per crop
    torch.manual_seed(0)
    got = model.step_outputs(batch, 0)
    assert len(calls) == 2 + 1  # solo-learn's two calls, then ours: one over both crops
    assert set(got) == set(expected)
    teacher_keys = ["momentum_feats", "momentum_z", "momentum_logits"]
    if ibot_weight:
        teacher_keys.append("momentum_patch_tokens")
    assert {k for k in got if k.startswith("momentum_")} == {
        *teacher_keys,
        "momentum_loss",
        "momentum_acc1",
        "momentum_acc5",
    }
    # a ViT has no BN: one call over 8 rows is 2 calls over 4, up to float32 summation order
    for key in teacher_keys:
        assert len(got[key]) == 2
        for g, e in zip(got[key], expected[key], strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    for key in ("momentum_loss", "momentum_acc1", "momentum_acc5", "loss"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    # the student's outputs are untouched: the same masks, crops and heads
    for key in ("feats", "q"):
        for g, e in zip(got[key], expected[key], strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def count_calls(module: torch.nn.Module) -> list:
    rows = []
    module.register_forward_hook(lambda m, inputs, out: rows.append(len(inputs[0])))
    return rows


@pytest.mark.parametrize("group", [1, 2])
def test_backbone_calls_per_step_are_views_over_group_and_one_for_the_teacher(image_folder, group):
    model = build(synclr_cfg(image_folder, f"++method_kwargs.views_per_backbone_call={group}"))
    student, teacher = count_calls(model.backbone), count_calls(model.momentum_backbone)
    loss = model.training_step(custom_batch(), 0)
    loss.backward()
    # 2 global + 8 local crops of 4 items, `group` crops per call; the teacher: both global ones
    assert student == [4 * group] * ((2 + 8) // group)
    assert teacher == [8]
    assert torch.isfinite(loss)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("momentum_"))


@pytest.mark.parametrize("ibot_weight", [0.0, 1.0], ids=["no-ibot", "ibot"])
def test_grouped_student_gives_the_per_crop_loss_on_a_vit(image_folder, ibot_weight):
    per_crop = build(vit_synclr_cfg(image_folder, ibot_weight))
    grouped = build(
        vit_synclr_cfg(image_folder, ibot_weight, "++method_kwargs.views_per_backbone_call=2")
    )
    grouped.load_state_dict(per_crop.state_dict())
    calls = count_calls(grouped.backbone.patch_embed)  # iBOT's forward bypasses the ViT's own
    batch = custom_batch(5)
    losses, grads = [], []
    for model in (per_crop, grouped):
        torch.manual_seed(0)  # the same iBOT masks: they are drawn per crop, in crop order
        loss = model.training_step(batch, 0)
        loss.backward()
        losses.append(loss)
        grads.append(model.backbone.patch_embed.proj.weight.grad)
    assert calls == [8] * 5  # 2 crops of 4 items per call: the global ones, then 4 x 2 local
    # no BN in a ViT or the LayerNorm heads: only the float32 summation order differs
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "group, message",
    [
        (3, "divides both the 2 large crops and the 8 small crops, got 3"),
        (4, "divides both the 2 large crops and the 8 small crops, got 4"),
        (0, "views_per_backbone_call must be an integer >= 1, got 0"),
    ],
)
def test_bad_views_per_backbone_call_is_one_line(image_folder, group, message):
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    cfg = synclr_cfg(image_folder, f"++method_kwargs.views_per_backbone_call={group}")
    with pytest.raises(InputError, match=re.escape(message)) as error:
        METHODS["synclr"](cfg)
    assert "\n" not in str(error.value)


def test_grouped_calls_refuse_local_crops_of_two_sizes(image_folder):
    from omegaconf import OmegaConf
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    cfg = synclr_cfg(image_folder, "++method_kwargs.views_per_backbone_call=2")
    # the 8 local crops from two pipelines, 16 px and 24 px: a call would mix sizes
    cfg.augmentations[1].num_crops = 4
    cfg.augmentations.append(OmegaConf.merge(cfg.augmentations[1], {"crop_size": 24}))
    with pytest.raises(InputError, match=re.escape("needs one small crop size, got [16, 24]")):
        METHODS["synclr"](cfg)


def test_fused_ema_update_is_solo_learns():
    from solo.utils.momentum import MomentumUpdater

    from solo_stablerep.methods.synclr import FusedMomentumUpdater

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    teachers = [copy.deepcopy(student) for _ in range(2)]
    for teacher in teachers:
        for p in teacher.parameters():
            p.requires_grad = False
            p.data.normal_()  # a teacher that differs from the student
    teachers[1].load_state_dict(teachers[0].state_dict())
    fused, solo = FusedMomentumUpdater(0.9, 1.0), MomentumUpdater(0.9, 1.0)
    for updater in (fused, solo):
        updater.update_tau(cur_step=3, max_steps=10)
    fused.update(student, teachers[0])
    solo.update(student, teachers[1])
    for a, b in zip(teachers[0].parameters(), teachers[1].parameters(), strict=True):
        # the same formula, one rounding apart
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    before = copy.deepcopy(teachers[0].state_dict())
    fused.cur_tau = 1.0  # the end of the schedule leaves the teacher where it is
    fused.update(student, teachers[0])
    for name, value in teachers[0].state_dict().items():
        assert torch.equal(value, before[name]), name


def test_queue_fills_with_the_teacher_keys_and_caption_ids(image_folder):
    # 4 items x 2 global crops = 8 keys per step; a queue of 16 holds two steps
    model = build(synclr_cfg(image_folder, "method_kwargs.queue_size=16"))
    model.training_step(custom_batch(1), 0)
    assert int(model.queue.valid.sum()) == 8
    assert model.queue.labels[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    model.training_step(custom_batch(2), 1)
    assert bool(model.queue.valid.all()) and int(model.queue.position) == 0
    assert "queue.keys" in model.state_dict()  # checkpointed with the model


def test_ibot_trains_the_mask_token_and_prototype_head_on_a_vit(image_folder):
    model = build(synclr_cfg(image_folder, *TINY_IBOT))
    logged = {}
    model.log = lambda k, v, **_: logged.__setitem__(k, v)
    loss = model.training_step(custom_batch(3), 0)
    loss.backward()
    assert torch.isfinite(loss) and logged["train_ibot_loss"] > 0
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.ibot_head.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.momentum_ibot_head.parameters())
    assert model.cfg.backbone.kwargs.dynamic_img_size  # the 16 px local crops go through the ViT


def test_ibot_teacher_temperature_warms_up_linearly_then_stays():
    from solo_stablerep.methods.synclr import warmup_teacher_temperature

    # the authors' teacher_temp_schedule: 0.04 -> 0.07 linearly over the warm-up epochs
    at = [warmup_teacher_temperature(e, 0.04, 0.07, 2.0) for e in (0.0, 0.5, 1.0, 2.0, 3.5)]
    assert at == pytest.approx([0.04, 0.0475, 0.055, 0.07, 0.07], abs=1e-15)
    assert warmup_teacher_temperature(0.0, 0.04, 0.07, 0.0) == 0.07  # no warm-up: constant


def test_ibot_targets_use_the_temperature_of_the_step(image_folder, monkeypatch):
    from types import SimpleNamespace

    import solo_stablerep.methods.synclr as synclr

    cfg = synclr_cfg(
        image_folder,
        *TINY_IBOT,
        "max_epochs=4",
        "+method_kwargs.ibot_warmup_teacher_temperature_epochs=2",
    )
    model = build(cfg)
    kwargs = model.cfg.method_kwargs  # the defaults: the authors'
    assert (kwargs.ibot_warmup_teacher_temperature, kwargs.ibot_teacher_temperature) == (0.04, 0.07)
    assert model.ibot_teacher_temperature == 0.04  # before the first step
    used = []
    sinkhorn_knopp = synclr.sinkhorn_knopp
    monkeypatch.setattr(
        synclr, "sinkhorn_knopp", lambda logits, t: used.append(t) or sinkhorn_knopp(logits, t)
    )
    # 4 epochs of 10 steps: step 5 is epoch 0.5 of the 2-epoch warm-up, step 30 is past it
    for step, expected in ((0, 0.04), (5, 0.0475), (10, 0.055), (30, 0.07)):
        model.trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=40)
        model.on_train_batch_start(None, step)
        model.training_step(custom_batch(step), step)
        assert used[-1] == pytest.approx(expected, abs=1e-12), step


def test_heads_are_the_authors_layer_norm_mlps_or_stablereps(image_folder):
    import torch.nn as nn

    from solo_stablerep.methods.stablerep import build_projector

    model = build(synclr_cfg(image_folder))
    assert model.cfg.method_kwargs.head_norm == "ln"
    for head, layers in (
        (model.projector, 3),
        (model.momentum_projector, 3),
        (model.predictor, 2),
    ):
        kinds = [type(m) for m in head]
        assert kinds == [nn.Linear, nn.LayerNorm, nn.GELU] * (layers - 1) + [
            nn.Linear,
            nn.LayerNorm,
        ]
        assert head[-2].bias is None and not head[-1].elementwise_affine  # the output norm
        assert head[0].bias is not None and not head[0].bias.any()
    # the authors' init, timm's trunc_normal_(std=0.02) (cut at +-2: a normal in effect); of
    # 512 x 32 weights the sample std is within 10 % at 18 standard errors
    assert float(model.projector[0].weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    # no BN in the heads (resnet18's own are BatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    z = model(custom_batch()[1][0])["z"].detach()
    # a LayerNorm without affine on the output: every embedding is zero-mean and unit-variance
    # (up to its eps, 1e-5 against variances of ~1e-2 before it)
    torch.testing.assert_close(z.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones(4), atol=1e-2, rtol=0)

    bn = build(synclr_cfg(image_folder, "+method_kwargs.head_norm=bn"))
    reference = build_projector(bn.features_dim, 32, 16, 3)
    for head in (bn.projector, bn.momentum_projector):
        assert [type(m) for m in head] == [type(m) for m in reference]  # StableRep's projector
    assert [type(m) for m in bn.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_vit_tokens_are_the_vits_features_with_masked_patches_replaced():
    # timm's public forward_features / forward_head, the mask put in by a hook on patch_embed
    import timm

    from solo_stablerep.methods.synclr import vit_tokens

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0).eval()
    X = torch.randn(2, 3, 32, 32)
    token = torch.randn(1, 1, vit.embed_dim)
    with torch.no_grad():
        feats, patches = vit_tokens(vit, X)
        assert torch.equal(feats, vit(X)) and patches.shape == (2, 4, vit.embed_dim)
        none = torch.zeros(2, 4, dtype=torch.bool)
        assert torch.equal(vit_tokens(vit, X, none, token)[0], feats)
        # every patch masked: the output no longer depends on the image, and the hook is gone
        every = torch.ones(2, 4, dtype=torch.bool)
        masked, _ = vit_tokens(vit, X, every, token)
        torch.testing.assert_close(
            masked, vit_tokens(vit, torch.randn(2, 3, 32, 32), every, token)[0]
        )
        assert not torch.allclose(masked, feats)
        assert torch.equal(vit(X), feats)


def test_patch_masks_mask_half_the_images_at_half_their_patches():
    from solo_stablerep.methods.synclr import random_patch_masks

    masks = random_patch_masks(8, 16, 0.5, 0.5, "cpu")
    per_image = masks.sum(1)
    assert sorted(per_image.tolist()) == [0] * 4 + [8] * 4


@pytest.mark.slow
def test_weight_decay_follows_a_cosine_to_weight_decay_end(image_folder, tmp_path, monkeypatch):
    from solo.methods import METHODS

    from solo_stablerep.pretrain import build_trainer, prepare_train_data

    monkeypatch.chdir(tmp_path)
    cfg = synclr_cfg(
        image_folder, "+method_kwargs.weight_decay_end=0.3", "optimizer.weight_decay=0.1"
    )
    cfg.max_steps = 3
    model = METHODS["synclr"](cfg)
    trainer = build_trainer(cfg, model)
    trainer.fit(model, prepare_train_data(cfg))
    # set before the last step (global step 2 of 3): 0.3 + (0.1 - 0.3) (1 + cos(2 pi / 3)) / 2
    decays = {g["name"]: g["weight_decay"] for g in trainer.optimizers[0].param_groups}
    assert decays["backbone"] == pytest.approx(0.25) and decays["predictor"] == pytest.approx(0.25)
    assert decays["classifier"] == 0.0  # groups made without decay stay without
    assert sorted(set(decays.values())) == [0.0, pytest.approx(0.25)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["augmentations.0.num_crops=1", "augmentations.1.num_crops=4"],
            "method synclr needs at least 2 global crops per item, got 1",
        ),
        (
            ["augmentations.1.crop_size=32"],
            "method_kwargs.num_local_crops=4 but no augmentation makes local crops",
        ),
        (
            ["augmentations.1.num_crops=6"],
            "method_kwargs.num_local_crops=4 per global crop, but the "
            "augmentations give 6 local crops for 2 global ones",
        ),
        (["method_kwargs.ibot_weight=1.0"], "method_kwargs.ibot_weight=1.0 needs a ViT backbone"),
        (
            ["method_kwargs.queue_size=12"],
            "method_kwargs.queue_size=12 must be 0 or a multiple of the "
            "teacher keys of one step, 8",
        ),
        (["+method_kwargs.head_norm=gn"], "method_kwargs.head_norm must be one of ['bn', 'ln']"),
        (
            ["+method_kwargs.ibot_warmup_teacher_temperature_epochs=-1"],
            "method_kwargs.ibot_warmup_teacher_temperature_epochs must be >= 0, got -1",
        ),
    ],
    ids=[
        "one-global-crop",
        "no-local-augmentation",
        "local-count-mismatch",
        "ibot-on-resnet",
        "queue-not-a-multiple",
        "unknown-head-norm",
        "negative-warm-up",
    ],
)
def test_bad_input_is_one_line_naming_it(image_folder, overrides, message):
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    cfg = synclr_cfg(image_folder, *overrides)
    with pytest.raises(InputError, match=re.escape(message)) as error:
        METHODS["synclr"](cfg)
    assert "\n" not in str(error.value)


def test_one_image_per_caption_is_refused(tmp_path):
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    make_manifest_dataset(tmp_path / "ds", 8, 2)
    overrides = SMOKE_OVERRIDES + [
        f"data.train_path={tmp_path / 'ds'}",
        "data.synthetic.n_img=1",
        "dali.device=cpu",
        "augmentations.0.crop_size=16",
        "augmentations.1.crop_size=8",
        "checkpoint.enabled=False",
    ]
    cfg = compose_parsed_cfg(PRETRAIN_CONFIGS / "synthetic", "synclr.yaml", overrides)
    with pytest.raises(
        InputError, match="synclr needs at least 2 images per caption, got data.synthetic.n_img=1"
    ):
        METHODS["synclr"](cfg)
