"""Synthetic data for StableRep: many images per caption (Stable Diffusion, or a toy renderer).

Writes the ``stablerep-synthetic`` format of :mod:`solo_stablerep.data.manifest`. Command line:
``stablerep-generate CAPTIONS OUT [options]`` / ``python -m data_gen``;
``stablerep-generate merge OUT``.
"""

from solo_stablerep.errors import DataGenError

from .captions import CaptionSet, load_captions, normalize_caption
from .output import merge
from .runner import RunOptions, generate
from .settings import GenerationSettings, image_seed

__all__ = [
    "CaptionSet",
    "DataGenError",
    "GenerationSettings",
    "RunOptions",
    "generate",
    "image_seed",
    "load_captions",
    "merge",
    "normalize_caption",
]
