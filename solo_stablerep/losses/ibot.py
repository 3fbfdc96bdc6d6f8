r"""iBOT's masked-patch loss with Sinkhorn–Knopp teacher targets (as SynCLR uses it).

Some patch tokens of a student's global crop are replaced by a mask token; the student must
predict, at each masked position, the teacher's prototype assignment of the unmasked patch
(Zhou et al., "iBOT", ICLR 2022; SynCLR, CVPR 2024, via DINOv2's ``iBOTPatchLoss``).

For the :math:`M` masked patches of the global batch, with student prototype logits :math:`s_p`
and teacher logits :math:`t_p` (:math:`K` prototypes), the teacher targets are the
Sinkhorn–Knopp assignments (:func:`sinkhorn_knopp`) of :math:`Q = \exp(t / \tau_t)`, made
doubly stochastic in turns (prototype rows sum to :math:`1/K`, patch columns to :math:`1/M`,
``n_iterations`` times), each column then scaled to sum to 1:

.. math::

    \mathcal{L} = \frac{1}{|I|} \sum_{b \in I} \frac{1}{|M_b|} \sum_{p \in M_b}
                  -\sum_k q_{pk} \log \operatorname{softmax}_k(s_p / \tau_s)

where :math:`I` are the images with at least one masked patch and :math:`M_b` the masked
patches of image :math:`b`.

Under ``torch.distributed`` the Sinkhorn–Knopp sums run over every rank's patches, and each rank
returns its share of the global mean (the average over ranks, as DDP computes for gradients,
equals one process's loss on the whole batch, even when ranks mask different numbers of images).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from solo_stablerep.losses.distributed import global_row_mean, is_distributed
from solo_stablerep.losses.multi_positive import _as_float32_if_half


def _all_reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, temperature: float, n_iterations: int = 3
) -> torch.Tensor:
    """Sinkhorn–Knopp targets of (M, K) teacher logits over the patches of every rank.

    Args:
        teacher_logits: (M, K) this rank's rows (computed in float32 at least).
        temperature: teacher temperature :math:`\\tau_t`.
        n_iterations: normalisation rounds (SynCLR: 3).

    Returns:
        (M, K): each row a probability vector over the prototypes.

    Examples:
        >>> targets = sinkhorn_knopp(torch.randn(10, 32), temperature=0.07)
        >>> torch.allclose(targets.sum(1), torch.ones(10))
        True
    """

    logits = _as_float32_if_half(teacher_logits) / temperature
    # the global max: exp() stays in range, and the first normalisation cancels it
    top = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    top = _all_reduce(top.clone(), dist.ReduceOp.MAX)
    q = torch.exp(logits - top).T  # (K, M)
    n_prototypes = q.shape[0]
    n_patches = _all_reduce(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_patches
    return (q * n_patches).T


def ibot_patch_loss(
    student_logits: torch.Tensor,
    teacher_targets: torch.Tensor,
    masks: torch.Tensor,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """iBOT's masked-patch loss (formula in the module docstring).

    Args:
        student_logits: (M, K) prototype logits of the masked patches, in the order of
            ``masks.flatten().nonzero()``.
        teacher_targets: (M, K) the teacher's targets of the same patches (e.g.
            :func:`sinkhorn_knopp`); no gradient flows into them.
        masks: (B, T) bool, the masked patches of each of this rank's images.
        student_temperature: :math:`\\tau_s` (SynCLR: 0.1).

    Returns:
        Scalar: this rank's share of the mean over the masked images of the global batch.

    Examples:
        >>> masks = torch.rand(4, 16) < 0.5
        >>> s, t = torch.randn(int(masks.sum()), 32), torch.randn(int(masks.sum()), 32)
        >>> loss = ibot_patch_loss(s, sinkhorn_knopp(t, 0.07), masks)
    """

    if student_logits.shape != teacher_targets.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student_logits and teacher_targets must both be (M, K), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_targets.shape)}"
        )
    if masks.dim() != 2 or masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be a (B, T) bool tensor, got {masks.dtype} {tuple(masks.shape)}"
        )
    if student_temperature <= 0:
        raise ValueError(f"student_temperature must be > 0, got {student_temperature}")

    log_p = F.log_softmax(_as_float32_if_half(student_logits) / student_temperature, dim=-1)
    patch_losses = -(teacher_targets.detach().to(log_p.dtype) * log_p).sum(dim=-1)
    masked_per_image = masks.sum(dim=1)
    weights = (1.0 / masked_per_image.clamp(min=1).to(log_p.dtype))[:, None].expand_as(masks)
    loss_sum = (patch_losses * weights[masks]).sum()
    masked_images = _all_reduce((masked_per_image > 0).sum())
    return global_row_mean(loss_sum, masked_images)
