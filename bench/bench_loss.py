"""The multi-positive loss against solo-learn's SimCLR loss and a naive implementation, side by
side, at N = 4096, D = 256 (CPU).

solo-learn's ``simclr_loss_func`` is the loss a solo-learn user would otherwise train with
(SupCon's "inside the log" form with these labels: a different value, the same work). The naive
version is our formula written the obvious way: an N x N float target matrix, an explicit
softmax with exp / sum / log, self-exclusion by multiplying with a float mask. All are timed
forward + backward in alternating rounds on the same inputs, after checking that ours agrees
with the naive one. Without solo-learn only the naive ratio is printed.

    python bench/bench_loss.py [--n 4096] [--dim 256] [--rounds 5]
"""

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from solo_stablerep.losses import multi_positive_contrastive_loss


def naive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    not_self = 1.0 - torch.eye(n)
    positives = (labels[:, None] == labels[None, :]).float() * not_self
    target = positives / positives.sum(1, keepdim=True).clamp(min=1)
    exp_logits = torch.exp(z @ z.T / temperature) * not_self
    log_prob = z @ z.T / temperature - torch.log(exp_logits.sum(1, keepdim=True))
    row_loss = -(target * log_prob).sum(1)
    has_positive = positives.sum(1) > 0
    return row_loss[has_positive].mean()


def timed(fn, z, labels) -> float:
    z = z.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(z, labels, 0.1).backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--views", type=int, default=6, help="views per caption")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.n, args.dim, generator=g)
    labels = torch.arange(args.n) // args.views
    ours, naive = multi_positive_contrastive_loss(z, labels, 0.1), naive_loss(z, labels, 0.1)
    torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-5)

    contenders = {"ours": multi_positive_contrastive_loss, "naive": naive_loss}
    try:
        with warnings.catch_warnings():  # solo-learn's import-time deprecation noise
            warnings.simplefilter("ignore")
            from solo.losses.simclr import simclr_loss_func
    except ImportError as error:
        print(f"solo-learn not importable ({error}): no ratio against its SimCLR loss")
    else:
        contenders["solo-learn simclr"] = simclr_loss_func

    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, loss in contenders.items():
            times[name].append(timed(loss, z, labels))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"N={args.n} D={args.dim}, forward + backward, median of {args.rounds}: "
        + ", ".join(f"{name} {t * 1000:.1f} ms" for name, t in median.items())
    )
    if "solo-learn simclr" in median:
        ratio = median["ours"] / median["solo-learn simclr"]
        print(f"RATIO loss_time_vs_solo_simclr {ratio:.3f} (goal <= 1.0)")
    print(f"RATIO loss_time_vs_naive {median['ours'] / median['naive']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
