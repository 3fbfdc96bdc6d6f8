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

from typing import Tuple

import torch
import torch.nn.functional as F

from solo_stablerep.losses.distributed import gather_rows, global_row_mean


def _as_float32_if_half(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def multi_positive_cross_entropy(
    logits: torch.Tensor, positives: torch.Tensor, excluded: torch.Tensor = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy between each row's softmax and a uniform target over its positives.

    Args:
        logits: (rows, cols) scaled similarities.
        positives: (rows, cols) bool, True where column j is a positive of row i.
        excluded: optional (rows, cols) bool, columns left out of row i's softmax (self).

    Returns:
        The sum of the row losses over rows with at least one positive, and the number of
        such rows. Kept as a sum so that callers can average over the global batch.
    """

    if excluded is not None:
        # The dtype's lowest finite value rather than -inf: a row with no other column
        # (a global batch of one) then stays finite instead of turning into NaN.
        logits = logits.masked_fill(excluded, torch.finfo(logits.dtype).min)
        positives = positives & ~excluded
    # Row-max subtraction keeps exp() in range; it changes no softmax value.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_prob = F.log_softmax(logits, dim=1)

    n_positives = positives.sum(dim=1)
    has_positive = n_positives > 0
    positive_log_prob = (log_prob * positives).sum(dim=1)
    row_loss = -positive_log_prob / n_positives.clamp(min=1)
    return row_loss[has_positive].sum(), has_positive.sum()


def multi_positive_contrastive_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """StableRep's multi-positive contrastive loss (formula in the module docstring).

    Args:
        z: (N, D) embeddings of this rank's views; normalised here. Half-precision inputs are
            computed in float32.
        labels: (N,) integer group ids: views with equal labels are positives of each other.
        temperature: softmax temperature tau (paper: 0.1).

    Returns:
        Scalar loss: this rank's share of the mean over all rows that have a positive
        (0 with a graph if no row has one).
    """

    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if labels.shape != z.shape[:1]:
        raise ValueError(f"labels must be ({z.shape[0]},) to match z, got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    z = F.normalize(_as_float32_if_half(z), dim=1)
    all_z, offset = gather_rows(z)
    all_labels, _ = gather_rows(labels, with_grad=False)

    logits = z @ all_z.T / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, offset + rows] = True
    positives = labels[:, None] == all_labels[None, :]

    loss_sum, n_rows = multi_positive_cross_entropy(logits, positives, excluded=is_self)
    return global_row_mean(loss_sum, n_rows)
