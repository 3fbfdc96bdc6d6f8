"""Collapse and health signals a method logs next to its loss, from tensors its step already has.

- :func:`embedding_std`: the std over the batch of the L2-normalised embeddings, per dimension,
  averaged over the dimensions (SimSiam's collapse monitor: Chen & He, "Exploring Simple Siamese
  Representation Learning", CVPR 2021, section 4.1). A collapsed model (every row the same) gives
  0; rows spread evenly over the unit sphere give about ``1 / sqrt(d)``.
- :func:`mean_cosine`: the mean cosine between matching rows, e.g. a student's global-crop query
  and the teacher's key of the same crop (SynCLR's student–teacher agreement): 1 when the
  student reproduces the teacher's direction, about 0 when they are unrelated.

Both are detached, computed in float32 at least, and return a 0-dim tensor on the device, so
``self.log`` takes them like a loss (no host sync of their own).
"""

import torch
import torch.nn.functional as F


def _normalised(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)


def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of ``std_i(z_i / ||z_i||)`` for (N, d) ``embeddings``, N >= 2.

    Examples:
        >>> embedding_std(torch.ones(8, 4)).item()
        0.0
    """

    return _normalised(embeddings).std(dim=0).mean()


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_i cos(a_i, b_i)`` over the rows of two (N, d) tensors."""

    return (_normalised(a) * _normalised(b)).sum(dim=1).mean()
