"""One whole SynCLR training step against the authors' code, in float64.

    python bench/synclr_vs_authors.py /path/to/syn-rep-learn   # or SYN_REP_LEARN=/path/to/...

``/path/to/syn-rep-learn`` is a checkout of google-research/syn-rep-learn (never copied into this
repository). The script imports from its ``SynCLR/train_pytorch``: the heads (``MLPHead``, built
as ``build_contrast_head`` builds them), ``SupConMomentumLoss`` and the EMA update
(``MetaArch.update_teacher``, with ``misc.adjust_moco_momentum_v2`` for its tau), and reproduces
``MetaArch.forward``'s contrastive path with them: the teacher on the collated global crops, the
student backbone on the global then the local crops, one projector + predictor call over all
their tokens, the loss. Our side is ``method: synclr``'s ``training_step`` on the same weights
(a tiny ViT, LayerNorm heads), the same batch (global and local crops) and a teacher that
differs from the student. Then both sides take the same SGD step and their EMA update at the
same training step. Compared: the contrastive loss, every parameter's gradient (the sum over
ranks / ranks, as DDP averages), tau, and every teacher parameter after the EMA update; on one
process and on two gloo ranks (each rank half of the captions), with and without
``avoid_local_global_same``. Exits 1 if a difference exceeds ``--tolerance``.

Their code needs two import shims on current libraries (``torch._six.inf``, removed in torch
2.0, and ``timm.models.layers.helpers``, moved to ``timm.layers.helpers``); nothing of theirs is
changed. solo-learn's online classifier (on detached features, absent from their step) is left
out of the gradient comparison. The ViT's ``pos_embed`` gradient is reported on its own, against
float32 rounding: timm resamples the position embedding for the local crops in float32
(``resample_abs_pos_embed`` casts to float32 on both sides), and the two sides call the backbone
on differently grouped local crops (theirs all at once, ours one view at a time), so its
float32 rounding differs; every other tensor is compared to float64 rounding.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from omegaconf import OmegaConf

CAPTIONS = 6  # over all ranks
GLOBAL_VIEWS = 4  # images of a caption, one global crop each
LOCAL_PER_GLOBAL = 2
HIDDEN, OUT = 64, 16
STEP, STEPS, EPOCHS = 37, 100, 10  # the EMA update of step 37 of 100 (3.7 of 10 epochs)
LR = 0.5
FLOAT32_EPS = torch.finfo(torch.float32).eps


def import_authors(checkout: str) -> types.SimpleNamespace:
    sys.modules.setdefault("torch._six", types.SimpleNamespace(inf=math.inf))
    import timm.layers.helpers

    sys.modules.setdefault("timm.models.layers.helpers", timm.layers.helpers)
    sys.path.insert(0, str(Path(checkout) / "SynCLR" / "train_pytorch"))
    from models.head import MLPHead
    from models.mask_losses import SupConMomentumLoss
    from synclr_meta_arch import MetaArch
    from util import misc

    return types.SimpleNamespace(
        MLPHead=MLPHead, SupConMomentumLoss=SupConMomentumLoss, MetaArch=MetaArch, misc=misc
    )


def build_ours(avoid_local_global_same: bool):
    from solo.methods import METHODS

    import solo_stablerep.methods  # noqa: F401 - registers synclr

    cfg = OmegaConf.create(
        {
            "name": "check",
            "method": "synclr",
            "backbone": {"name": "vit_tiny", "kwargs": {"img_size": 32}},
            "method_kwargs": {
                "proj_hidden_dim": HIDDEN,
                "proj_output_dim": OUT,
                "pred_hidden_dim": HIDDEN,  # the authors' predictor has the projector's width
                "num_local_crops": LOCAL_PER_GLOBAL,
                "avoid_local_global_same": avoid_local_global_same,
            },
            "momentum": {"base_tau": 0.994, "final_tau": 1.0},
            "data": {
                "dataset": "custom",
                "num_classes": 10,
                "num_large_crops": GLOBAL_VIEWS,
                "num_small_crops": GLOBAL_VIEWS * LOCAL_PER_GLOBAL,
            },
            "optimizer": {
                "name": "adamw",
                "batch_size": CAPTIONS,
                "lr": 1e-3,
                "classifier_lr": 1e-3,
                "weight_decay": 0.1,
            },
            "scheduler": {"name": "none"},
            "max_epochs": EPOCHS,
        }
    )
    OmegaConf.set_struct(cfg, False)
    cfg = METHODS["synclr"].add_and_assert_specific_cfg(cfg)
    torch.manual_seed(0)
    model = METHODS["synclr"](cfg).double()
    with torch.no_grad():  # a teacher that is not the student: its keys and the EMA both matter
        for _, teacher in model.momentum_pairs:
            for p in teacher.parameters():
                p.add_(0.01 * torch.randn_like(p))
    logged = {}
    model.log = lambda name, value, *a, **k: logged.__setitem__(name, value)
    model.log_dict = lambda *a, **k: None  # no Trainer attached
    return model, logged


def batch_of_rank(rank: int, world: int):
    """The batch of every rank drawn from one generator; this rank's captions."""

    g = torch.Generator().manual_seed(1)
    views = [
        torch.randn(CAPTIONS, 3, 32, 32, generator=g, dtype=torch.float64)
        for _ in range(GLOBAL_VIEWS)
    ]
    views += [
        torch.randn(CAPTIONS, 3, 16, 16, generator=g, dtype=torch.float64)
        for _ in range(GLOBAL_VIEWS * LOCAL_PER_GLOBAL)
    ]
    rows = slice(rank * CAPTIONS // world, (rank + 1) * CAPTIONS // world)
    indexes = torch.arange(CAPTIONS)[rows]
    return [indexes, [v[rows] for v in views], torch.zeros(len(indexes), dtype=torch.long)]


def authors_step(theirs, model, batch, avoid_local_global_same: bool):
    """MetaArch.forward's contrastive path with the authors' heads and loss on our weights."""

    def head(ours: nn.Sequential, num_layers: int, input_dim: int) -> nn.Module:
        mlp = theirs.MLPHead(num_layers, input_dim, HIDDEN, OUT, mlp_norm="ln").double()
        mlp.mlp.load_state_dict(ours.state_dict())
        return mlp

    student = nn.ModuleDict(
        {
            "backbone": copy.deepcopy(model.backbone),
            "proj": head(model.projector, 3, model.features_dim),
            "pred": head(model.predictor, 2, OUT),
        }
    )
    teacher = nn.ModuleDict(
        {
            "backbone": copy.deepcopy(model.momentum_backbone),
            "proj": head(model.momentum_projector, 3, model.features_dim),
        }
    )
    indexes, views, _ = batch
    # their collate: crop-major, and local crop c of every image after local crop c-1 of all
    global_crops = torch.cat(views[:GLOBAL_VIEWS])
    local_views = views[GLOBAL_VIEWS:]
    local_crops = torch.cat(
        [
            local_views[v * LOCAL_PER_GLOBAL + c]
            for c in range(LOCAL_PER_GLOBAL)
            for v in range(GLOBAL_VIEWS)
        ]
    )
    global_labels = indexes.repeat(GLOBAL_VIEWS)
    local_labels = indexes.repeat(GLOBAL_VIEWS * LOCAL_PER_GLOBAL)
    with torch.no_grad():
        teacher_cls = teacher["proj"](teacher["backbone"](global_crops))
    tokens = torch.cat([student["backbone"](global_crops), student["backbone"](local_crops)])
    loss = theirs.SupConMomentumLoss(model.temperature, avoid_local_global_same)(
        {
            "student_contrast_cls": student["pred"](student["proj"](tokens)),
            "teacher_contrast_cls": teacher_cls,
            "student_labels": torch.cat([global_labels, local_labels]),
            "teacher_labels": global_labels,
        }
    )["total_contrast_loss"]
    loss.backward()
    return loss, student, teacher


def average_gradients(params) -> None:
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def sgd_step(params) -> None:
    with torch.no_grad():
        for p in params:
            p.sub_(LR * p.grad)


def max_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def resampled(model, params) -> list:
    """Flags the ViTs' position embeddings, which timm resamples in float32."""

    return [p is model.backbone.pos_embed or p is model.momentum_backbone.pos_embed for p in params]


def split_difference(ours, theirs, in_float32) -> tuple[float, float]:
    """Largest difference over the float64 tensors, and over the float32-resampled ones."""

    return tuple(
        max_difference(
            [x for x, f in zip(ours, in_float32, strict=True) if f == flag],
            [y for y, f in zip(theirs, in_float32, strict=True) if f == flag],
        )
        for flag in (False, True)
    )


def compare(theirs, avoid_local_global_same: bool) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    model, logged = build_ours(avoid_local_global_same)
    batch = batch_of_rank(rank, world)
    their_loss, student, teacher = authors_step(theirs, model, batch, avoid_local_global_same)
    model.training_step(batch, 0).backward()
    our_loss = logged["train_synclr_loss"]

    ours = [model.backbone, model.projector, model.predictor]
    our_params = [p for m in ours for p in m.parameters()]
    their_params = [p for k in ("backbone", "proj", "pred") for p in student[k].parameters()]
    average_gradients(our_params)
    average_gradients(their_params)
    missing = [p for p in our_params + their_params if p.grad is None]
    grads, pos_embed = split_difference(
        [p.grad for p in our_params], [p.grad for p in their_params], resampled(model, our_params)
    )
    grad_scale = max(p.grad.abs().max().item() for p in our_params)

    sgd_step(our_params)
    sgd_step(their_params)
    updater = model.momentum_updater
    updater.update_tau(cur_step=STEP, max_steps=STEPS)
    for pair in model.momentum_pairs:
        updater.update(*pair)
    args = types.SimpleNamespace(
        moco_m=0.994, moco_m_final=1.0, moco_m_epochs=EPOCHS, moco_m_cos=True, moco_m_linear=False
    )
    m = theirs.misc.adjust_moco_momentum_v2(STEP / STEPS * EPOCHS, args)
    holder = types.SimpleNamespace(
        student=student, teacher=teacher, momentum_module=["backbone", "proj"]
    )
    theirs.MetaArch.update_teacher(holder, m)
    our_teacher = [p for _, t in model.momentum_pairs for p in t.parameters()]
    their_teacher = [p for k in ("backbone", "proj") for p in teacher[k].parameters()]
    teacher_diff, teacher_pos_embed = split_difference(
        our_teacher, their_teacher, resampled(model, our_teacher)
    )
    moved = max_difference(
        our_teacher, [p for s, _ in model.momentum_pairs for p in s.parameters()]
    )
    return {
        "loss": abs(our_loss.item() - their_loss.item()),
        "loss_value": our_loss.item(),
        "params": len(our_params),
        "no_grad": len(missing),
        "grad": grads,
        "pos_embed": pos_embed,
        "grad_scale": grad_scale,
        "tau": abs(updater.cur_tau - m),
        "teacher": teacher_diff,
        "teacher_pos_embed": teacher_pos_embed,
        "teacher_params": len(our_teacher),
        "teacher_vs_student": moved,
    }


def worker(rank: int, world: int, checkout: str, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    theirs = import_authors(checkout)
    for avoid in (True, False):
        result = compare(theirs, avoid)
        if rank == 0:
            results[(world, avoid)] = result
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkout",
        nargs="?",
        default=os.environ.get("SYN_REP_LEARN"),
        help="a checkout of google-research/syn-rep-learn (default: $SYN_REP_LEARN)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-12)
    args = parser.parse_args()
    if args.checkout is None:  # bench/run_all.py runs every script without arguments
        print("skipped: no checkout of google-research/syn-rep-learn (argument or SYN_REP_LEARN)")
        return 0
    if not (Path(args.checkout) / "SynCLR" / "train_pytorch" / "synclr_meta_arch.py").is_file():
        parser.error(f"{args.checkout} has no SynCLR/train_pytorch/synclr_meta_arch.py")
    results = mp.Manager().dict()
    for port, world in ((29517, 1), (29518, 2)):
        mp.spawn(worker, args=(world, args.checkout, port, results), nprocs=world)
    print(
        "| ranks | avoid_local_global_same | loss | loss diff | grad diff (largest grad) "
        "| pos_embed grad diff | tau diff | teacher diff after EMA (pos_embed; teacher - student) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    worst = worst_float32 = 0.0
    for (world, avoid), r in sorted(results.items()):
        print(
            f"| {world} | {avoid} | {r['loss_value']:.6f} | {r['loss']:.1e} | {r['grad']:.1e} "
            f"({r['grad_scale']:.1e}; {r['params'] - 1} tensors, {r['no_grad']} without grad) "
            f"| {r['pos_embed']:.1e} | {r['tau']:.1e} | {r['teacher']:.1e} "
            f"({r['teacher_params']} tensors; {r['teacher_pos_embed']:.1e}; "
            f"{r['teacher_vs_student']:.1e}) |"
        )
        worst = max(worst, r["loss"], r["grad"], r["tau"], r["teacher"], float(r["no_grad"]))
        worst_float32 = max(worst_float32, r["pos_embed"] / r["grad_scale"])
    print(
        f"largest difference {worst:.1e} (tolerance {args.tolerance:.0e}); pos_embed's, relative "
        f"to the largest gradient, {worst_float32:.1e} (float32 eps {FLOAT32_EPS:.1e})"
    )
    print(f"RATIO synclr_step_vs_authors_max_diff {worst:.1e} (goal <= {args.tolerance:.0e})")
    print(f"RATIO synclr_step_vs_authors_pos_embed {worst_float32:.1e} (goal <= 1.2e-07)")
    ok = worst <= args.tolerance and worst_float32 <= FLOAT32_EPS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
