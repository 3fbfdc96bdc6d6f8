"""A StableRep training step against solo-learn's SimCLR step, measured side by side.

Same backbone (resnet18, CIFAR stem, 32 px), batch, number of views, optimiser and CPU
threads; rounds alternate between the two methods so that machine noise hits both. A step
is forward over every view, loss, backward and AdamW update, as Lightning runs it.

Three ratios are printed:
* ``stablerep_step_vs_simclr``: StableRep with a 2-layer projector of SimCLR's widths, so
  the difference is the method (loss, BN in the projector, classifier handling) — goal <= 1.02;
* ``stablerep_paper_projector_vs_simclr``: StableRep's 3-layer projector, for information;
* ``stablerep_demo_layout_vs_simclr``: the demo's steps (``stablerep-demo``), for information:
  64 crops each, StableRep's as 8 views of 8 captions, SimCLR's as 2 views of 32 images, the
  ImageNet stem the demo's 32 px crops get. solo-learn runs the backbone once per view, so
  StableRep makes 8 calls on 8 crops where SimCLR makes 2 on 32: at 32 px (8×8 maps after the
  stem) a call's fixed cost dominates and this ratio is about 2 — the demo's 2x train time.

    python bench/bench_step.py [--batch 8] [--views 4] [--rounds 10]
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

import solo_stablerep.methods  # noqa: F401 - registers stablerep
from solo.methods import METHODS


def build(method: str, views: int, batch: int, dataset: str = "cifar10", **method_kwargs):
    cfg = OmegaConf.create(
        {
            "name": "bench",
            "method": method,
            "backbone": {"name": "resnet18"},
            "method_kwargs": {"proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.1,
                              **method_kwargs},
            "data": {"dataset": dataset, "num_classes": 10, "num_large_crops": views,
                     "num_small_crops": 0},
            "optimizer": {"name": "adamw", "batch_size": batch, "lr": 1e-3, "classifier_lr": 1e-3,
                          "weight_decay": 0.1},
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
    return time.perf_counter() - start


def fake_batch(items: int, views: int) -> list:
    return [torch.arange(items), [torch.randn(items, 3, 32, 32) for _ in range(views)],
            torch.randint(0, 10, (items,))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="items per step")
    parser.add_argument("--views", type=int, default=4, help="views per item")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)

    contenders = {
        "simclr": build("simclr", args.views, args.batch),
        "stablerep": build("stablerep", args.views, args.batch, proj_num_layers=2),
        "stablerep_paper_projector": build("stablerep", args.views, args.batch, proj_num_layers=3),
    }
    # the demo's layout: "custom" data get solo-learn's ImageNet stem (CIFAR's keeps 32x32 maps)
    demo = dict(dataset="custom", proj_hidden_dim=512, proj_output_dim=128)
    contenders.update({
        "demo_stablerep_8x8": build("stablerep", 8, 8, **demo),
        "demo_simclr_2x32": build("simclr", 2, 32, **demo),
    })
    batches = {name: fake_batch(args.batch, args.views) for name in contenders}
    batches.update(demo_stablerep_8x8=fake_batch(8, 8), demo_simclr_2x32=fake_batch(32, 2))
    times = {name: [] for name in contenders}
    for round_index in range(args.rounds + 1):
        for name, (model, optimizer) in contenders.items():
            elapsed = step(model, optimizer, batches[name])
            if round_index > 0:  # the first round warms up allocators and kernels
                times[name].append(elapsed)

    median = {name: statistics.median(t) for name, t in times.items()}
    for name, value in median.items():
        print(f"{name:>28}: {value * 1000:8.1f} ms/step (median of {args.rounds})")
    print(f"RATIO stablerep_step_vs_simclr {median['stablerep'] / median['simclr']:.3f} (goal <= 1.02)")
    print(
        "RATIO stablerep_paper_projector_vs_simclr "
        f"{median['stablerep_paper_projector'] / median['simclr']:.3f} (information)"
    )
    print(
        "RATIO stablerep_demo_layout_vs_simclr "
        f"{median['demo_stablerep_8x8'] / median['demo_simclr_2x32']:.3f} (information)"
    )


if __name__ == "__main__":
    main()
