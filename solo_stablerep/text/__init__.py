"""Text side of StableRep++: CLIP's BPE tokenizer (offline), a CLIP text tower, and the tokens
of each item's caption that the data loaders append for the method.

open_clip is imported only when a tokenizer or a text tower is built.
"""

from solo_stablerep.text.captions import (
    check_caption_data,
    with_caption_tokens,
)
from solo_stablerep.text.tokenizer import CaptionTokenizer
from solo_stablerep.text.tower import build_text_tower

__all__ = [
    "CaptionTokenizer",
    "build_text_tower",
    "check_caption_data",
    "with_caption_tokens",
]
