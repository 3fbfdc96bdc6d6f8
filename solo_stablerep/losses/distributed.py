"""Collectives for losses that contrast local rows against every rank's rows.

Unlike solo-learn's ``gather``, these accept a different number of rows on each rank
(the last batch of an epoch, uneven shards) and return where the local rows sit in the
gathered tensor, which the losses need to exclude self-similarities.
"""

from typing import Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _gather_row_counts(x: torch.Tensor) -> list:
    local = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, local)
    return [int(c.item()) for c in counts]


def _all_gather_rows(x: torch.Tensor, counts: list) -> torch.Tensor:
    # all_gather needs equal shapes: pad every rank to the longest, then drop the padding.
    padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    chunks = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(chunks, padded.contiguous())
    return torch.cat([chunk[:count] for chunk, count in zip(chunks, counts)])


class _GatherRowsWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list, offset: int):
        ctx.rows = (offset, offset + x.shape[0])
        return _all_gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor):
        # Every rank's loss depends on our rows: sum their gradients, keep our slice.
        grad_gathered = grad_gathered.contiguous()
        dist.all_reduce(grad_gathered)
        start, end = ctx.rows
        return grad_gathered[start:end], None, None


def gather_rows(x: torch.Tensor, with_grad: bool = True) -> Tuple[torch.Tensor, int]:
    """Concatenates ``x`` from all ranks along dim 0.

    Returns the gathered tensor and the index of this rank's first row in it. Without
    ``torch.distributed`` it returns ``(x, 0)``. With ``with_grad`` the gradient flowing
    into the gathered tensor is summed over ranks and routed back to each rank's rows.
    """

    if not is_distributed():
        return x, 0
    counts = _gather_row_counts(x)
    offset = sum(counts[: dist.get_rank()])
    if with_grad:
        return _GatherRowsWithGrad.apply(x, counts, offset), offset
    with torch.no_grad():
        return _all_gather_rows(x, counts), offset


def global_row_mean(loss_sum: torch.Tensor, n_rows: torch.Tensor) -> torch.Tensor:
    """Turns a per-rank sum of row losses into this rank's share of the global mean.

    Returns ``world_size * loss_sum / n_rows_all_ranks``: the average of this value over
    ranks (what DDP's gradient averaging computes) is exactly the mean over every row of
    the global batch, whatever the number of rows on each rank.
    """

    n_total = n_rows.detach().to(loss_sum.dtype)
    if is_distributed():
        n_total = n_total.clone()
        dist.all_reduce(n_total)
    if n_total.item() == 0:
        # Nothing to contrast anywhere: a zero that keeps the graph (and DDP) intact.
        return loss_sum * 0.0
    return loss_sum * world_size() / n_total
