"""Losses of solo-stablerep: plain functions on tensors, usable with or without solo-learn."""

from solo_stablerep.losses.image_text import image_text_contrastive_loss
from solo_stablerep.losses.multi_positive import (
    multi_positive_contrastive_loss,
    multi_positive_cross_entropy,
)

__all__ = [
    "image_text_contrastive_loss",
    "multi_positive_contrastive_loss",
    "multi_positive_cross_entropy",
]
