"""Collectives and bookkeeping for losses that contrast local rows against every rank's rows.

Unlike solo-learn's ``gather``, :func:`gather_labelled_rows` accepts a different number of rows
on each rank (the last batch of an epoch, uneven shards), carries the rows' labels in the same
collective, and returns where the local rows sit in the gathered tensor, which the losses need
to exclude self-similarities. Given an upper bound on any rank's rows (``max_rows``, e.g. the
batch size times the views), every rank pads its rows to that bound and one collective carries
rows, labels and a validity flag: nothing waits for the device. Without it, the row counts are
exchanged first (a second collective and a host sync: the receive buffers' shapes depend on them).
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist

_LABEL_DTYPE = torch.int64


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """(world_size, *x.shape): ``x`` of every rank, stacked in rank order."""
    chunks = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(chunks, x.contiguous())
    return torch.stack(chunks)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on our rows: sum their gradients, keep our slice.
        grad_gathered = grad_gathered.contiguous()
        dist.all_reduce(grad_gathered)
        return grad_gathered[dist.get_rank()]


def _labels_as_columns(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # The labels' bytes, reinterpreted as columns of the rows' dtype so that they travel in the
    # rows' buffer; collectives only copy bytes, so they arrive exactly (no float rounding).
    labels = labels.to(_LABEL_DTYPE).contiguous()
    columns = _LABEL_DTYPE.itemsize // dtype.itemsize
    return labels.view(dtype).view(labels.shape[0], columns)


def _columns_as_labels(columns: torch.Tensor) -> torch.Tensor:
    return columns.detach().contiguous().view(_LABEL_DTYPE).view(-1)


def gather_labelled_rows(
    *blocks: tuple[torch.Tensor, torch.Tensor],
    max_rows: Sequence[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]]:
    """Concatenates each ``(rows, labels)`` block over all ranks, in rank order.

    Args:
        *blocks: pairs of (n_b, D) floating rows (the same D and dtype for every block; the
            number of rows may differ between blocks and between ranks) and their (n_b,)
            integer labels.
        max_rows: per block, an upper bound on n_b on every rank. Given, each rank's block is
            padded to it and no host sync is needed; the padding rows come back marked invalid.

    Returns:
        For each block, ``(all_rows, all_labels, offset, valid)``: the gathered rows (the gradient
        flowing into them is summed over ranks and routed back to each rank's rows), the
        gathered labels (int64), the index of this rank's first row in them, and ``valid``, a
        bool mask of the real rows among them when ``max_rows`` padded them (None when every
        row is real; padding rows are zeros labelled 0). Without ``torch.distributed``:
        ``(rows, labels, 0, None)``.
    """

    if not is_distributed():
        return [(rows, labels, 0, None) for rows, labels in blocks]
    rank = dist.get_rank()
    device, dtype = blocks[0][0].device, blocks[0][0].dtype
    if any(rows.dtype != dtype for rows, _ in blocks):
        # torch.cat would promote one block and garble the other's label bytes
        raise ValueError(f"blocks must share one dtype, got {[rows.dtype for rows, _ in blocks]}")
    if max_rows is None:
        local_counts = torch.tensor([rows.shape[0] for rows, _ in blocks], device=device)
        counts = _all_gather(local_counts).tolist()  # [rank][block]: sizes the buffers below
        longest = [max(rank_counts[b] for rank_counts in counts) for b in range(len(blocks))]
    else:
        for (rows, _), bound in zip(blocks, max_rows, strict=True):
            if rows.shape[0] > bound:
                raise ValueError(f"{rows.shape[0]} rows on rank {rank}, more than max_rows={bound}")
        longest = list(max_rows)

    # One buffer per rank: each block padded to its longest rank, label columns (and, when
    # padded to a bound, a column flagging real rows) on the right.
    padded = []
    for (rows, labels), length in zip(blocks, longest, strict=True):
        columns = [rows, _labels_as_columns(labels, dtype)]
        if max_rows is not None:
            columns.append(rows.new_ones(rows.shape[0], 1))
        packed = torch.cat(columns, dim=1)
        padded.append(
            torch.cat([packed, packed.new_zeros(length - rows.shape[0], packed.shape[1])])
        )
    gathered = _AllGatherWithGrad.apply(torch.cat(padded))

    results, start = [], 0
    for b, ((rows, _), length) in enumerate(zip(blocks, longest, strict=True)):
        width = rows.shape[1]
        if max_rows is None:
            per_rank = [gathered[r, start : start + counts[r][b]] for r in range(len(counts))]
            all_packed, valid = torch.cat(per_rank), None
            offset = sum(counts[r][b] for r in range(rank))
        else:
            all_packed = gathered[:, start : start + length].reshape(-1, gathered.shape[-1])
            valid, offset = all_packed[:, -1].detach() > 0.5, rank * length
            all_packed = all_packed[:, :-1]
        results.append(
            (all_packed[:, :width], _columns_as_labels(all_packed[:, width:]), offset, valid)
        )
        start += length
    return results


def row_weights(ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """1 for each real row, 0 for padding (``valid`` from :func:`gather_labelled_rows`)."""
    return torch.ones_like(ids) if valid is None else valid.to(ids.dtype)


def group_ids(
    labels: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ids of equal labels and the size of each id's group.

    Returns ``(ids, group_sizes)``: ``ids[i] == ids[j]`` iff ``labels[i] == labels[j]``, ids in
    ``[0, len(labels))``, and ``group_sizes[ids[i]]`` is the number of real rows (``valid``;
    default all) labelled like ``i``. Built by sorting, so its shapes depend only on
    ``len(labels)`` (``torch.unique`` would wait for the device to learn how many labels there
    are).
    """

    sorted_labels, order = labels.sort()
    starts_group = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts_group[1:] = sorted_labels[1:] != sorted_labels[:-1]
    ids = torch.empty_like(order)
    ids[order] = starts_group.cumsum(0) - 1
    return ids, sum_by_group(row_weights(ids, valid), ids, len(ids))


def sum_by_group(x: torch.Tensor, ids: torch.Tensor, num_ids: int) -> torch.Tensor:
    """(num_ids, ...): entry ``g`` is the sum of the entries of ``x`` whose id is ``g`` (with
    gradient); ``x = ones`` counts the ids."""
    return x.new_zeros((num_ids,) + tuple(x.shape[1:])).index_add(0, ids, x)


def global_row_mean(loss_sum: torch.Tensor, n_rows_global: torch.Tensor) -> torch.Tensor:
    """Turns this rank's sum of row losses into its share of the mean over the global batch.

    ``n_rows_global`` is the number of rows averaged over on all ranks together (each rank
    computes it from the gathered labels, so no collective is needed). Returns
    ``world_size * loss_sum / n_rows_global``: the average of this value over ranks (what DDP's
    gradient averaging computes) is exactly the mean over every row of the global batch, however
    the rows are split between ranks. With no row anywhere, ``loss_sum`` is a zero that keeps the
    graph (and DDP) intact, and so is the result.
    """

    return loss_sum * world_size() / n_rows_global.to(loss_sum.dtype).clamp(min=1)
