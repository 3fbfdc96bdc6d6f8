"""A StableRep training step against solo-learn's SimCLR step, and SynCLR's against StableRep's,
measured side by side.

Same backbone (resnet18, CIFAR stem, 32 px), batch, number of views, optimiser and CPU
threads; rounds alternate between the two methods so that machine noise hits both. A step
is forward over every view, loss, backward and AdamW update, as Lightning runs it.

The ratios printed:
* ``stablerep_step_vs_simclr``: StableRep with a 2-layer projector of SimCLR's widths, so
  the difference is the method (loss, BN in the projector, classifier handling) — goal <= 1.02;
* ``stablerep_paper_projector_vs_simclr``: StableRep's 3-layer projector, for information;
* ``synclr_step_vs_stablerep``: SynCLR (``ibot_weight`` 0, its predictor, the teacher's forward
  over the global crops in one call and its EMA update all in the step) against StableRep on
  the same crops: ``--views`` global crops (32 px) and ``--local-crops`` 16 px crops per global
  one, both with the paper's 3-layer projector and both students forwarding
  ``--views-per-backbone-call`` crops per call (default 1, solo-learn's per-view forward) —
  goal <= 1.10 (the ratio of the medians; a line after it gives the per-round ratios' median
  and range);
* ``synclr_floor_measured`` / ``synclr_floor_flops``: StableRep's step plus the teacher's
  forward over the global crops (one call, as SynCLR's step runs it; timed on its own in the
  same rounds / counted in FLOPs), over StableRep's step: what any SynCLR step costs at least,
  for information; ``synclr_step_vs_floor``: SynCLR's step over the measured floor (1 = nothing
  but the teacher);
* ``synclr_demo_layout_vs_stablerep``: the demo's SynCLR step on the config's settings
  (``stablerep-demo --methods synclr --synclr-settings config``: 8 global 32 px crops of 8
  captions plus 4 local 16 px crops per global one, ``views_per_backbone_call`` 4, so 2 calls of
  32 global crops and 8 of 32 local ones, and one teacher call of 64; the demo's short-run
  settings have no local crops) against the demo's StableRep step below, for information: everything
  SynCLR adds in the demo (the local crops, the teacher); ``synclr_demo_per_view_vs_stablerep``:
  the same SynCLR step with ``views_per_backbone_call`` 1 (40 student calls of 8 crops), the
  demo's SynCLR before the grouping;
* ``stablerep_demo_layout_vs_simclr``: the demo's steps (``stablerep-demo``), for information:
  64 crops each, StableRep's as 8 views of 8 captions with ``views_per_backbone_call`` 4 (the
  demo's: 2 backbone calls of 32 crops), SimCLR's as 2 views of 32 images, the ImageNet stem
  the demo's 32 px crops get;
* ``stablerep_demo_per_view_vs_simclr``: the same with solo-learn's per-view forward
  (``views_per_backbone_call`` 1): 8 calls on 8 crops, whose fixed cost dominates at 32 px
  (8×8 maps after the stem) — about 2, the demo's 2x train time before the grouping.

    python bench/bench_step.py [--batch 8] [--views 4] [--local-crops 4]
        [--views-per-backbone-call 1] [--rounds 10] [--threads 1]
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf
from solo.methods import METHODS
from torch.utils.flop_counter import FlopCounterMode

import solo_stablerep.methods  # noqa: F401 - registers stablerep


def build(
    method: str,
    views: int,
    batch: int,
    local_views: int = 0,
    dataset: str = "cifar10",
    **method_kwargs,
):
    cfg = OmegaConf.create(
        {
            "name": "bench",
            "method": method,
            "backbone": {"name": "resnet18"},
            "method_kwargs": {
                "proj_hidden_dim": 2048,
                "proj_output_dim": 128,
                "temperature": 0.1,
                **method_kwargs,
            },
            "data": {
                "dataset": dataset,
                "num_classes": 10,
                "num_large_crops": views,
                "num_small_crops": local_views,
            },
            "optimizer": {
                "name": "adamw",
                "batch_size": batch,
                "lr": 1e-3,
                "classifier_lr": 1e-3,
                "weight_decay": 0.1,
            },
            "scheduler": {"name": "none"},
            "max_epochs": 1,
        }
    )
    OmegaConf.set_struct(cfg, False)
    model = METHODS[method](cfg)
    model.log = model.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


def step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model.training_step(batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    for student, teacher in getattr(model, "momentum_pairs", ()):  # what on_train_batch_end does
        model.momentum_updater.update(student, teacher)
    return time.perf_counter() - start


def teacher_forward(model, batch) -> float:
    """SynCLR's teacher over the global crops alone, as its step runs it: one call over all."""

    start = time.perf_counter()
    model.momentum_forward(torch.cat(batch[1][: model.num_large_crops]))
    return time.perf_counter() - start


def flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def views_batch(batch: int, views: int, local_views: int = 0) -> list:
    crops = [torch.randn(batch, 3, 32, 32) for _ in range(views)]
    crops += [torch.randn(batch, 3, 16, 16) for _ in range(local_views)]
    return [torch.arange(batch), crops, torch.randint(0, 10, (batch,))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="items per step")
    parser.add_argument("--views", type=int, default=4, help="views per item")
    parser.add_argument(
        "--local-crops", type=int, default=4, help="SynCLR: local crops per global one"
    )
    parser.add_argument(
        "--views-per-backbone-call",
        type=int,
        default=1,
        help="SynCLR and StableRep with local crops: method_kwargs.views_per_backbone_call "
        "(divides --views and --views x --local-crops)",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); "
        "1 keeps a busy shared machine from adding thread contention",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    local_views = args.views * args.local_crops
    group = args.views_per_backbone_call
    synclr = dict(temperature=0.08, num_local_crops=args.local_crops, ibot_weight=0.0)
    contenders = {
        "simclr": build("simclr", args.views, args.batch),
        "stablerep": build("stablerep", args.views, args.batch, proj_num_layers=2),
        "stablerep_paper_projector": build("stablerep", args.views, args.batch, proj_num_layers=3),
        "stablerep_multicrop": build(
            "stablerep", args.views, args.batch, local_views, views_per_backbone_call=group
        ),
        "synclr": build(
            "synclr",
            args.views,
            args.batch,
            local_views,
            pred_hidden_dim=2048,
            views_per_backbone_call=group,
            **synclr,
        ),
    }
    # the demo's layout: "custom" data get solo-learn's ImageNet stem (CIFAR's keeps 32x32 maps)
    demo = dict(dataset="custom", proj_hidden_dim=512, proj_output_dim=128)
    contenders.update(
        {
            "demo_stablerep_8x8": build("stablerep", 8, 8, views_per_backbone_call=4, **demo),
            "demo_stablerep_8x8_per_view": build("stablerep", 8, 8, **demo),
            "demo_simclr_2x32": build("simclr", 2, 32, **demo),
        }
    )
    # the demo's SynCLR: its predictor as wide as the projector, 4 local crops per global one
    demo_synclr = dict(synclr, num_local_crops=4, pred_hidden_dim=512, **demo)
    contenders.update(
        {
            "demo_synclr_8x8": build("synclr", 8, 8, 32, views_per_backbone_call=4, **demo_synclr),
            "demo_synclr_8x8_per_view": build("synclr", 8, 8, 32, **demo_synclr),
        }
    )
    batches = {"stablerep_multicrop": views_batch(args.batch, args.views, local_views)}
    batches["synclr"] = batches["stablerep_multicrop"]
    batches.update(demo_stablerep_8x8=views_batch(8, 8), demo_simclr_2x32=views_batch(32, 2))
    batches["demo_stablerep_8x8_per_view"] = batches["demo_stablerep_8x8"]
    batches["demo_synclr_8x8"] = batches["demo_synclr_8x8_per_view"] = views_batch(8, 8, 32)
    single_crop = views_batch(args.batch, args.views)
    times = {name: [] for name in contenders}
    times["synclr_teacher_forward"] = []
    for round_index in range(args.rounds + 1):
        for name, (model, optimizer) in contenders.items():
            elapsed = step(model, optimizer, batches.get(name, single_crop))
            if round_index > 0:  # the first round warms up allocators and kernels
                times[name].append(elapsed)
        elapsed = teacher_forward(contenders["synclr"][0], batches["synclr"])
        if round_index > 0:
            times["synclr_teacher_forward"].append(elapsed)

    median = {name: statistics.median(t) for name, t in times.items()}
    for name, value in median.items():
        print(f"{name:>28}: {value * 1000:8.1f} ms/step (median of {args.rounds})")
    print(
        f"RATIO stablerep_step_vs_simclr {median['stablerep'] / median['simclr']:.3f} "
        "(goal <= 1.02)"
    )
    print(
        "RATIO stablerep_paper_projector_vs_simclr "
        f"{median['stablerep_paper_projector'] / median['simclr']:.3f} (information)"
    )
    print(
        f"RATIO synclr_step_vs_stablerep {median['synclr'] / median['stablerep_multicrop']:.3f} "
        "(goal <= 1.10)"
    )
    per_round = [a / b for a, b in zip(times["synclr"], times["stablerep_multicrop"], strict=True)]
    print(
        f"synclr / stablerep per round: median {statistics.median(per_round):.3f}, "
        f"min {min(per_round):.3f}, max {max(per_round):.3f} ({args.rounds} rounds)"
    )
    floor = median["stablerep_multicrop"] + median["synclr_teacher_forward"]
    print(f"RATIO synclr_floor_measured {floor / median['stablerep_multicrop']:.3f} (information)")
    stablerep_flops = flops(step, *contenders["stablerep_multicrop"], batches["synclr"])
    teacher_flops = flops(teacher_forward, contenders["synclr"][0], batches["synclr"])
    print(f"RATIO synclr_floor_flops {1 + teacher_flops / stablerep_flops:.3f} (information)")
    print(f"RATIO synclr_step_vs_floor {median['synclr'] / floor:.3f} (information)")
    print(
        "RATIO stablerep_demo_layout_vs_simclr "
        f"{median['demo_stablerep_8x8'] / median['demo_simclr_2x32']:.3f} (information)"
    )
    print(
        "RATIO stablerep_demo_per_view_vs_simclr "
        f"{median['demo_stablerep_8x8_per_view'] / median['demo_simclr_2x32']:.3f} (information)"
    )
    print(
        "RATIO synclr_demo_layout_vs_stablerep "
        f"{median['demo_synclr_8x8'] / median['demo_stablerep_8x8']:.3f} (information)"
    )
    print(
        "RATIO synclr_demo_per_view_vs_stablerep "
        f"{median['demo_synclr_8x8_per_view'] / median['demo_stablerep_8x8']:.3f} (information)"
    )


if __name__ == "__main__":
    main()
