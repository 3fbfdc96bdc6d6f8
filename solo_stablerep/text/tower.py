"""CLIP's text encoder (Radford et al., 2021): token + positional embeddings, a causal pre-LN
transformer with QuickGELU, a final LayerNorm, the feature at the ``<eot>`` token (the largest
id of a row), and a linear projection into the shared image–text embedding. open_clip's
``TextTransformer`` with CLIP's settings and initialisation, as in the StableRep authors'
code (``models/StableRepMM.py``)."""

import torch.nn as nn

from solo_stablerep.text.tokenizer import CLIP_VOCAB_SIZE


def build_text_tower(
    width: int, layers: int, heads: int, context_length: int, embed_dim: int
) -> nn.Module:
    """A CLIP text tower mapping (B, context_length) token ids to (B, embed_dim) embeddings.

    CLIP ViT-B/16's text tower is width 512, 12 layers, 8 heads, context 77. The settings are
    taken as given (``width`` divisible by ``heads``): StableRep++ checks its ``method_kwargs``
    once (:attr:`~solo_stablerep.methods.stablerep_pp.StableRepPP.SETTINGS`).
    """

    from open_clip.transformer import QuickGELU, TextTransformer

    return TextTransformer(
        context_length=context_length,
        vocab_size=CLIP_VOCAB_SIZE,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=embed_dim,
        pool_type="argmax",  # <eot> has the largest id: CLIP's pooling
        act_layer=QuickGELU,  # CLIP's and the authors' (open_clip's default is nn.GELU)
    )
