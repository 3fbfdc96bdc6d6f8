r"""StableRep's multi-positive contrastive loss.

Given ``N`` embeddings :math:`z_i` with group labels :math:`y_i` (images generated from the
same caption share a label), each embedding is L2-normalised and contrasted against every
other embedding of the global batch:

.. math::

    a_{ij} = \frac{z_i^\top z_j}{\tau} \quad (j \neq i), \qquad a_{ii} = -\infty

    p_{ij} = \frac{\mathbb{1}[y_j = y_i,\ j \neq i]}{\sum_{k} \mathbb{1}[y_k = y_i,\ k \neq i]}

    \ell_i = -\sum_j p_{ij} \log \operatorname{softmax}_j(a_i)
           = H(p_i, \operatorname{softmax}(a_i))

    \mathcal{L} = \frac{1}{|V|} \sum_{i \in V} \ell_i, \qquad
    V = \{ i : \textstyle\sum_k \mathbb{1}[y_k = y_i,\ k \neq i] > 0 \}

This is a cross-entropy against a uniform target over the positives (Tian et al., 2023,
"StableRep", eq. 2), not SupCon's/SimCLR's :math:`-\log \sum_{pos} e^{a} / \sum_{all} e^{a}`.

Rows without a positive (a caption with a single view) have nothing to pull towards. The
authors' code gives them zero loss but still divides by them, so the loss shrinks with the
share of such rows; here they are left out of the mean (:math:`V` above) so the loss keeps its
meaning. They still serve as negatives for every other row.

Under ``torch.distributed`` each rank contrasts its rows against all ranks' rows (gathered
with gradient), excludes its own row ``i`` at global column ``offset_rank + i``, and labels
are compared across ranks, so equal labels on different ranks are positives. The value each
rank returns is its share of the global mean (see :func:`global_row_mean`): averaged over
ranks, as DDP does with gradients, it equals the loss of one process on the whole batch.
"""

import torch
import torch.nn.functional as F

from solo_stablerep.losses.distributed import (
    gather_labelled_rows,
    global_row_mean,
    group_ids,
    sum_by_group,
)


def _as_float32_if_half(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def multi_positive_row_losses(
    rows: torch.Tensor,
    cols: torch.Tensor,
    positive_col_sums: torch.Tensor,
    n_positives: torch.Tensor,
    excluded_cols: torch.Tensor | None = None,
    valid_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Sum over rows with a positive of :math:`H(p_i, \operatorname{softmax}(a_i))`, where
    :math:`a_{ij} = r_i^\top c_j` and :math:`p_i` is uniform over row ``i``'s positives.

    The positives enter only through their sum: :math:`\sum_{j \in P_i} a_{ij} =
    r_i^\top \sum_{j \in P_i} c_j`, so no (rows, cols) target or mask is built, and
    :math:`\ell_i = \operatorname{logsumexp}_j a_{ij} - r_i^\top C_i / |P_i|`.

    Args:
        rows: (R, D) row embeddings, any scale (temperature) already applied.
        cols: (C, D) column embeddings.
        positive_col_sums: (R, D) :math:`C_i`, the sum of row ``i``'s positive columns.
        n_positives: (R,) :math:`|P_i|`; rows with 0 are left out of the sum.
        excluded_cols: (R,) int: column ``excluded_cols[i]`` (row ``i`` itself, or its own
            image) is left out of row ``i``'s softmax (the positives must already exclude it);
            a negative entry excludes nothing; None: no column is excluded.
        valid_cols: (C,) bool, False for padding columns, which are left out of every softmax;
            None: every column is real.

    Returns:
        Scalar: the sum of the row losses of rows with at least one positive.
    """

    logits = rows @ cols.T
    # Excluded entries get the dtype's lowest finite value rather than -inf: a row with no other
    # column (a global batch of one) then stays finite instead of turning into NaN. Not recorded
    # by autograd: the softmax gives these entries a gradient of exactly 0 anyway
    # (exp(lowest - logsumexp) = 0; a row without other columns has no positive and no
    # gradient), and recording the fill would copy the whole (R, C) gradient.
    with torch.no_grad():
        lowest = torch.finfo(logits.dtype).min
        if excluded_cols is not None:
            rows_index = torch.arange(len(excluded_cols), device=logits.device)
            cols_index = excluded_cols.clamp(min=0)
            kept = logits[rows_index, cols_index]
            logits[rows_index, cols_index] = torch.where(excluded_cols < 0, kept, lowest)
        if valid_cols is not None:
            logits.masked_fill_(~valid_cols, lowest)
    # logsumexp subtracts the row max itself: exp() stays in range for any temperature.
    row_loss = torch.logsumexp(logits, dim=1) - (rows * positive_col_sums).sum(dim=1) / (
        n_positives.clamp(min=1)
    )
    # where, not boolean indexing: a data-dependent shape would wait for the device
    return torch.where(n_positives > 0, row_loss, 0.0).sum()


def multi_positive_contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    max_rows_per_rank: int | None = None,
) -> torch.Tensor:
    """StableRep's multi-positive contrastive loss (formula in the module docstring).

    Args:
        z: (N, D) embeddings of this rank's views; normalised here. Half-precision inputs are
            computed in float32.
        labels: (N,) integer group ids: views with equal labels are positives of each other.
        temperature: softmax temperature tau (paper: 0.1).
        max_rows_per_rank: under ``torch.distributed``, an upper bound on N on every rank (a
            method knows it: batch size times views). Given, the all-gather pads to it and the
            loss never waits for the device; without it, the ranks first exchange their N.
            The value is the same either way.

    Returns:
        Scalar loss: this rank's share of the mean over all rows that have a positive
        (0 with a graph if no row has one).

    Examples:
        >>> z = torch.randn(12, 128)  # 3 captions x 4 views, projected
        >>> labels = torch.arange(3).repeat_interleave(4)
        >>> loss = multi_positive_contrastive_loss(z, labels, temperature=0.1)
    """

    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if labels.shape != z.shape[:1]:
        raise ValueError(f"labels must be ({z.shape[0]},) to match z, got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    z = F.normalize(_as_float32_if_half(z), dim=1)
    bounds = None if max_rows_per_rank is None else [max_rows_per_rank]
    ((all_z, all_labels, offset, valid),) = gather_labelled_rows((z, labels), max_rows=bounds)

    ids, group_sizes = group_ids(all_labels, valid)  # padding rows (zeros) count in no group
    local_ids = ids[offset : offset + z.shape[0]]
    # a row's positives: every gathered row with its label, except itself
    positive_sums = sum_by_group(all_z, ids, len(ids))[local_ids] - z
    n_positives = group_sizes[local_ids] - 1

    self_cols = offset + torch.arange(z.shape[0], device=z.device)
    loss_sum = multi_positive_row_losses(
        z / temperature,
        all_z,
        positive_sums,
        n_positives,
        excluded_cols=self_cols,
        valid_cols=valid,
    )
    rows_with_positive = group_sizes[ids] > 1
    if valid is not None:
        rows_with_positive &= valid
    return global_row_mean(loss_sum, rows_with_positive.sum())
