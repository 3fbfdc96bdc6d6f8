"""The multi-positive loss against a naive implementation, side by side, at N = 4096, D = 256.

The naive version is the formula written the obvious way: an N x N float target matrix,
an explicit softmax with exp / sum / log, self-exclusion by multiplying with a float mask.
Both are timed forward + backward in alternating rounds on the same inputs, after checking
that they agree.

    python bench/bench_loss.py [--n 4096] [--dim 256] [--rounds 5]
"""

import argparse
import statistics
import time

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

    times = {"ours": [], "naive": []}
    for _ in range(args.rounds):
        times["ours"].append(timed(multi_positive_contrastive_loss, z, labels))
        times["naive"].append(timed(naive_loss, z, labels))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"N={args.n} D={args.dim}: ours {median['ours'] * 1000:.1f} ms, "
          f"naive {median['naive'] * 1000:.1f} ms (forward + backward, median of {args.rounds})")
    print(f"RATIO loss_time_vs_naive {median['ours'] / median['naive']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
