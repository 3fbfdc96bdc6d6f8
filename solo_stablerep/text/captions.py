"""Captions for methods that need them (``needs_captions = True``, e.g. StableRep++).

The synthetic data set's loaders (:mod:`solo_stablerep.data.loaders`,
:mod:`solo_stablerep.data.dali`) yield ``[indexes, views, targets]``, ``indexes`` being each
caption's position in its data set; given a tokenizer (:func:`with_caption_tokens`) they append
each caption's CLIP token ids, read from the data set's own reader: the memory-mapped caption index
(the manifest's ``caption`` fields or the second column of the authors' CSV) or each tar sample's
JSON, so no caption list is held by the training process or its workers.
"""

from typing import Any

import omegaconf

from solo_stablerep.errors import InputError
from solo_stablerep.text.tokenizer import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer


def check_caption_data(cfg: omegaconf.DictConfig) -> None:
    """One-line InputError unless ``cfg``'s training data can carry captions."""

    if cfg.data.dataset != "synthetic":
        raise InputError(
            f"method {cfg.method} trains on captions: set data.dataset=synthetic (got "
            f"data.dataset={cfg.data.dataset}, which has no captions)"
        )


def with_caption_tokens(cfg: omegaconf.DictConfig, train_data: Any) -> Any:
    """The synthetic training data of ``cfg`` (either loader) with each batch's caption tokens
    appended; the context length is ``method_kwargs.context_length`` (default 77)."""

    check_caption_data(cfg)
    tokenizer = CaptionTokenizer(cfg.method_kwargs.get("context_length", DEFAULT_CONTEXT_LENGTH))
    return train_data.with_caption_tokens(tokenizer)
