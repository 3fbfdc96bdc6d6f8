"""Losses of solo-stablerep: plain functions on tensors, usable with or without solo-learn.

Importing them loads torch only (no solo-learn, Lightning or timm).
"""

from solo_stablerep.losses.ibot import ibot_patch_loss, sinkhorn_knopp
from solo_stablerep.losses.image_text import image_text_contrastive_loss
from solo_stablerep.losses.key_queue import LabelledKeyQueue
from solo_stablerep.losses.momentum_multi_positive import momentum_multi_positive_loss
from solo_stablerep.losses.multi_positive import multi_positive_contrastive_loss

__all__ = [
    "LabelledKeyQueue",
    "ibot_patch_loss",
    "image_text_contrastive_loss",
    "momentum_multi_positive_loss",
    "multi_positive_contrastive_loss",
    "sinkhorn_knopp",
]
