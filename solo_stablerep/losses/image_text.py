r"""StableRep++'s image–text contrastive loss: CLIP's loss with several images per caption.

Given :math:`N` image embeddings :math:`u_i` with caption labels :math:`y_i` and :math:`M` text
embeddings :math:`v_k` with caption labels :math:`c_k` (both L2-normalised here) and a logit
scale :math:`s = e^{t}` (learnable :math:`t`, CLIP), the logits are

.. math::

    a_{ik} = s\, u_i^\top v_k \quad\text{(image } i \text{ vs text } k\text{)}, \qquad
    b_{ki} = a_{ik} \quad\text{(text } k \text{ vs image } i\text{)}.

Several images are generated from one caption, so each direction is multi-positive with a
uniform target over the matching captions (Tian et al., 2023, StableRep++, the authors' code):

.. math::

    p_{ik} = \frac{\mathbb{1}[c_k = y_i]}{\sum_{k'} \mathbb{1}[c_{k'} = y_i]}, \qquad
    q_{ki} = \frac{\mathbb{1}[y_i = c_k]}{\sum_{i'} \mathbb{1}[y_{i'} = c_k]}

    \mathcal{L}_{i \to t} = \frac{1}{|V_I|} \sum_{i \in V_I}
        -\sum_k p_{ik} \log \operatorname{softmax}_k(a_i),
    \qquad
    \mathcal{L}_{t \to i} = \frac{1}{|V_T|} \sum_{k \in V_T}
        -\sum_i q_{ki} \log \operatorname{softmax}_i(b_k)

    \mathcal{L} = \tfrac12 \left( \mathcal{L}_{i \to t} + \mathcal{L}_{t \to i} \right)

where :math:`V_I` (:math:`V_T`) are the images (texts) whose caption appears among the texts
(images) at all. With one text per caption and one image per caption this is exactly CLIP's
symmetric InfoNCE loss. No self-similarity is excluded: images and texts are different rows.
A caption's text usually appears once, so :math:`p_i` is one-hot, while :math:`q_k` spreads
over the caption's ``n_img`` images (however many each caption has in the batch).

Under ``torch.distributed`` each rank contrasts its images against every rank's texts and its
texts against every rank's images (both gathered with gradient, rows may differ in number
between ranks); labels are compared across ranks, so they must be global caption ids (dataset
indices). Each direction returns this rank's share of its global mean (see
:func:`~solo_stablerep.losses.distributed.global_row_mean`), so averaging over ranks, as DDP
does with gradients, gives the loss of one process on the whole batch.
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
from solo_stablerep.losses.multi_positive import _as_float32_if_half, multi_positive_row_losses


def image_text_contrastive_loss(
    image_z: torch.Tensor,
    image_labels: torch.Tensor,
    text_z: torch.Tensor,
    text_labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    max_rows_per_rank: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Symmetric multi-positive image–text contrastive loss (formula in the module docstring).

    Args:
        image_z: (N, D) image embeddings of this rank; normalised here. Half-precision inputs
            are computed in float32 (as are the texts).
        image_labels: (N,) caption id of each image (global ids: dataset indices).
        text_z: (M, D) text embeddings of this rank; normalised here.
        text_labels: (M,) caption id of each text.
        logit_scale: the multiplier :math:`s` of the cosine similarities (already
            exponentiated and clamped; a tensor keeps its gradient).
        max_rows_per_rank: under ``torch.distributed``, upper bounds on (N, M) on every rank;
            given, the all-gather pads to them and never waits for the device (see
            :func:`~solo_stablerep.losses.multi_positive_contrastive_loss`).

    Returns:
        Scalar: this rank's share of ``(L_i2t + L_t2i) / 2`` over the global batch.
    """

    if image_z.dim() != 2 or text_z.dim() != 2 or image_z.shape[1] != text_z.shape[1]:
        raise ValueError(
            f"image_z and text_z must be (N, D) and (M, D), got {tuple(image_z.shape)} and "
            f"{tuple(text_z.shape)}"
        )
    if image_labels.shape != image_z.shape[:1]:
        raise ValueError(
            f"image_labels must be ({image_z.shape[0]},), got {tuple(image_labels.shape)}"
        )
    if text_labels.shape != text_z.shape[:1]:
        raise ValueError(
            f"text_labels must be ({text_z.shape[0]},), got {tuple(text_labels.shape)}"
        )

    image_z = F.normalize(_as_float32_if_half(image_z), dim=1)
    text_z = F.normalize(_as_float32_if_half(text_z), dim=1)
    if isinstance(logit_scale, torch.Tensor):
        logit_scale = _as_float32_if_half(logit_scale)

    images, texts = gather_labelled_rows(
        (image_z, image_labels), (text_z, text_labels), max_rows=max_rows_per_rank
    )
    all_images, all_image_labels, image_offset, image_valid = images
    all_texts, all_text_labels, text_offset, text_valid = texts
    # one id space for both sides: an image's positives are the texts with its id, and back
    ids, _ = group_ids(torch.cat([all_image_labels, all_text_labels]))
    image_ids, text_ids = ids[: len(all_image_labels)], ids[len(all_image_labels) :]
    image_sums = sum_by_group(all_images, image_ids, len(ids))
    text_sums = sum_by_group(all_texts, text_ids, len(ids))
    # padding rows (zeros, from max_rows_per_rank) add nothing to the sums and count nowhere
    image_counts = sum_by_group(row_weights(image_ids, image_valid), image_ids, len(ids))
    text_counts = sum_by_group(row_weights(text_ids, text_valid), text_ids, len(ids))

    local_image_ids = image_ids[image_offset : image_offset + image_z.shape[0]]
    local_text_ids = text_ids[text_offset : text_offset + text_z.shape[0]]
    image_to_text = multi_positive_row_losses(
        logit_scale * image_z,
        all_texts,
        text_sums[local_image_ids],
        text_counts[local_image_ids],
        valid_cols=text_valid,
    )
    text_to_image = multi_positive_row_losses(
        logit_scale * text_z,
        all_images,
        image_sums[local_text_ids],
        image_counts[local_text_ids],
        valid_cols=image_valid,
    )
    # each direction is a mean over the global (real) rows that have a positive on the other side
    images_with_text = (text_counts[image_ids] > 0) & row_weights(image_ids, image_valid).bool()
    texts_with_image = (image_counts[text_ids] > 0) & row_weights(text_ids, text_valid).bool()
    image_to_text = global_row_mean(image_to_text, images_with_text.sum())
    text_to_image = global_row_mean(text_to_image, texts_with_image.sum())
    return (image_to_text + text_to_image) / 2
