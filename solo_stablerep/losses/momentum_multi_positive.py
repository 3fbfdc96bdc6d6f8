r"""SynCLR's multi-positive contrastive loss: student queries against a momentum teacher's keys.

SynCLR (Tian, Fan, Chen, Katabi, Krishnan, Isola, "Learning Vision from Models Rivals Learning
Vision from Data", CVPR 2024) keeps StableRep's loss (:mod:`.multi_positive`) but contrasts the
student's crops (queries :math:`q`) against the keys :math:`k` of an EMA teacher, computed on the
global crop of every image of the (global) batch. Image :math:`m` has caption label :math:`y_m`,
one global crop (query :math:`q_m`, key :math:`k_m`, the same pixels) and :math:`K` local crops
(queries :math:`q_{m,c}`); all vectors are L2-normalised. For a query :math:`q` of image
:math:`m` and the columns :math:`j` (every key of the global batch, plus the queue's, if any):

.. math::

    a_j = q^\top k_j / \tau, \qquad
    E = \{m\} \text{ for a global query; } \{m\} \text{ or } \emptyset
    \text{ for a local one (avoid\_local\_global\_same or not)}

    P = \{ j \notin E : y_j = y_m \}, \qquad
    \ell(q) = -\frac{1}{|P|} \sum_{j \in P} \log
              \frac{e^{a_j}}{\sum_{j' \notin E} e^{a_{j'}}}

    \mathcal{L} = \frac{1}{|V_g|} \sum_{q \in V_g} \ell(q)
                + \frac{1}{|V_l|} \sum_{q \in V_l} \ell(q)

where :math:`V_g` (:math:`V_l`) are the global (local) queries of the global batch with
:math:`|P| > 0`. A global query never sees its own key (the teacher's view of the same
pixels); with ``avoid_local_global_same`` a local query does not see its own image's key either,
as a positive or a negative (the authors' ``SupConMomentumLoss``, which also sums a global
and a local mean). Queries without a positive are left out of the means, as in
:func:`~solo_stablerep.losses.multi_positive_contrastive_loss` (the authors divide by their
zero count, a NaN).

Keys carry no gradient. An optional :class:`~solo_stablerep.losses.key_queue.LabelledKeyQueue`
adds the keys of earlier steps as columns (a key of the same caption is a positive); this
step's gathered keys are pushed into it after the loss is computed.

Under ``torch.distributed`` the keys and labels are all-gathered (ranks may hold different
numbers of images); each rank returns its share of the global means (see
:func:`~solo_stablerep.losses.distributed.global_row_mean`), so the average over ranks, as DDP
computes for gradients, is the loss of one process on the whole batch.
"""

import torch
import torch.nn.functional as F

from solo_stablerep.losses.distributed import (
    gather_labelled_rows,
    global_row_mean,
    group_ids,
    row_weights,
    sum_by_group,
)
from solo_stablerep.losses.key_queue import LabelledKeyQueue
from solo_stablerep.losses.multi_positive import _as_float32_if_half, multi_positive_row_losses


def momentum_multi_positive_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    local_queries: torch.Tensor | None = None,
    local_owners: torch.Tensor | None = None,
    temperature: float = 0.08,
    avoid_local_global_same: bool = True,
    queue: LabelledKeyQueue | None = None,
    max_rows_per_rank: int | None = None,
) -> torch.Tensor:
    """SynCLR's contrastive loss (formula in the module docstring).

    Args:
        queries: (N, D) student embeddings of this rank's global crops; row ``m`` is the crop
            whose teacher key is ``keys[m]``. Normalised here; half precision is computed in
            float32.
        keys: (N, D) teacher embeddings of the same crops (no gradient flows into them).
        labels: (N,) caption id of each image (global ids: dataset indices).
        local_queries: (L, D) student embeddings of this rank's local crops, or None. Every
            image has the same number of local crops on every rank (L = K N).
        local_owners: (L,) row of ``keys`` of the image each local crop was cut from.
        temperature: softmax temperature tau (SynCLR: 0.08).
        avoid_local_global_same: a local crop does not see its own image's key.
        queue: keys of earlier steps used as extra columns; this step's keys are pushed.
        max_rows_per_rank: under ``torch.distributed``, an upper bound on N on every rank:
            the all-gather pads to it and never waits for the device.

    Returns:
        Scalar: this rank's share of the global-crop mean plus the local-crop mean.

    Examples:
        >>> labels = torch.arange(3).repeat(4)  # 3 captions x 4 images, one global crop each
        >>> q, k = torch.randn(12, 64), torch.randn(12, 64)
        >>> local_q = torch.randn(48, 64)  # 4 local crops per image
        >>> owners = torch.arange(12).repeat(4)
        >>> loss = momentum_multi_positive_loss(q, k, labels, local_q, owners)
    """

    if queries.dim() != 2 or keys.shape != queries.shape:
        raise ValueError(
            f"queries and keys must both be (N, D), got {tuple(queries.shape)} and "
            f"{tuple(keys.shape)}"
        )
    if labels.shape != queries.shape[:1]:
        raise ValueError(f"labels must be ({queries.shape[0]},), got {tuple(labels.shape)}")
    if (local_queries is None) != (local_owners is None):
        raise ValueError("local_queries and local_owners go together")
    if local_queries is not None:
        n_local = local_queries.shape[0]
        if local_owners.shape != (n_local,) or local_queries.shape[1:] != queries.shape[1:]:
            raise ValueError(
                f"local_queries must be (L, {queries.shape[1]}) and local_owners (L,), got "
                f"{tuple(local_queries.shape)} and {tuple(local_owners.shape)}"
            )
        if queries.shape[0] == 0 or n_local % queries.shape[0]:
            raise ValueError(
                f"{n_local} local crops for {queries.shape[0]} images: not K per image"
            )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    queries = F.normalize(_as_float32_if_half(queries), dim=1)
    keys = F.normalize(_as_float32_if_half(keys.detach()), dim=1)
    bounds = None if max_rows_per_rank is None else [max_rows_per_rank]
    ((batch_keys, batch_labels, offset, batch_valid),) = gather_labelled_rows(
        (keys, labels), max_rows=bounds
    )
    n_batch_keys = batch_keys.shape[0]
    cols, col_labels, col_valid = batch_keys, batch_labels, batch_valid
    if queue is not None:
        cols = torch.cat([cols, queue.keys.to(cols.dtype)])
        col_labels = torch.cat([col_labels, queue.labels])
        real = torch.ones(n_batch_keys, dtype=torch.bool, device=cols.device)
        col_valid = torch.cat([real if batch_valid is None else batch_valid, queue.valid])
    # invalid columns (padding, empty queue slots) add nothing to the sums and count nowhere
    col_weights = row_weights(col_labels, col_valid).to(cols.dtype)
    ids, group_sizes = group_ids(col_labels, col_valid)
    positive_sums = sum_by_group(cols * col_weights[:, None], ids, len(ids))

    # global queries: every key of the caption but their own
    own_cols = offset + torch.arange(queries.shape[0], device=queries.device)
    own_ids = ids[own_cols]
    global_sum = multi_positive_row_losses(
        queries / temperature,
        cols,
        positive_sums[own_ids] - cols[own_cols],
        group_sizes[own_ids] - 1,
        excluded_cols=own_cols,
        valid_cols=col_valid,
    )
    # every real key of the global batch is one global query
    batch_key_ids = ids[:n_batch_keys]
    real_keys = row_weights(batch_key_ids, batch_valid).bool()
    loss = global_row_mean(global_sum, (real_keys & (group_sizes[batch_key_ids] > 1)).sum())
    if local_queries is None:
        if queue is not None:
            queue.push(batch_keys, batch_labels, batch_valid)
        return loss

    local_queries = F.normalize(_as_float32_if_half(local_queries), dim=1)
    owner_cols = offset + local_owners
    owner_ids = ids[owner_cols]
    if avoid_local_global_same:
        local_sums = positive_sums[owner_ids] - cols[owner_cols]
        local_counts = group_sizes[owner_ids] - 1
        excluded = owner_cols
    else:
        local_sums, local_counts = positive_sums[owner_ids], group_sizes[owner_ids]
        excluded = None
    local_sum = multi_positive_row_losses(
        local_queries / temperature, cols, local_sums, local_counts, excluded, col_valid
    )
    # K local queries per real key, K the same on every rank
    crops_per_image = local_queries.shape[0] // queries.shape[0]
    min_group = 2 if avoid_local_global_same else 1
    local_rows = crops_per_image * (real_keys & (group_sizes[batch_key_ids] >= min_group)).sum()
    if queue is not None:
        queue.push(batch_keys, batch_labels, batch_valid)
    return loss + global_row_mean(local_sum, local_rows)
