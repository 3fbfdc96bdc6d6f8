"""Losses of solo-stablerep: plain functions on tensors, usable with or without solo-learn."""

from solo_stablerep.losses.multi_positive import (
    multi_positive_contrastive_loss,
    multi_positive_cross_entropy,
)

__all__ = ["multi_positive_contrastive_loss", "multi_positive_cross_entropy"]
