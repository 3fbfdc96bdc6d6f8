"""Losses of solo-stablerep: plain functions on tensors, usable with or without solo-learn.

Importing them loads torch only (no solo-learn, Lightning or timm).
"""

from solo_stablerep.losses.image_text import image_text_contrastive_loss
from solo_stablerep.losses.multi_positive import multi_positive_contrastive_loss

__all__ = ["image_text_contrastive_loss", "multi_positive_contrastive_loss"]
