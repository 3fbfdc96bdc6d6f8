"""Captions for methods that need them (``needs_captions = True``, e.g. StableRep++).

The synthetic data set (:mod:`solo_stablerep.data.loaders`) yields ``(index, views, target)``,
where ``index`` is the caption's position in its data set. :class:`CaptionTokensDataset` wraps
it and appends that caption's CLIP token ids: ``(index, views, target, tokens)``, tokenized in
the DataLoader workers. The DALI loader carries no text, but its batches carry the caption
indices: :class:`CaptionTokensLoader` appends the tokens to each of its batches (tokenized in
the training process, one batch of captions per step). The caption texts come from the data
set's own :class:`~solo_stablerep.data.index.CaptionIndex` (the manifest's ``caption`` fields or
the second column of the authors' CSV), memory-mapped: no second parse of the manifest, and no
Python string per caption held by the training process or its workers.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import omegaconf
from torch.utils.data import DataLoader, Dataset

from solo_stablerep.errors import InputError
from solo_stablerep.text.tokenizer import DEFAULT_CONTEXT_LENGTH, CaptionTokenizer


class CaptionTokensDataset(Dataset):
    """Appends the tokenized caption of each item: ``(index, views, target, tokens)``.

    Args:
        dataset (Dataset): yields ``(index, views, target)`` with ``index`` a caption position.
        captions (Sequence[str]): caption text of each index.
        tokenizer (CaptionTokenizer): caption -> (context_length,) token ids.
    """

    def __init__(self, dataset: Dataset, captions: Sequence[str], tokenizer: CaptionTokenizer):
        if len(captions) != len(dataset):
            raise ValueError(
                f"{len(captions)} captions for a data set of {len(dataset)} items: they must match"
            )
        self.dataset = dataset
        self.captions = captions
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        index, views, target = self.dataset[i]
        return index, views, target, self.tokenizer(self.captions[index])


class CaptionTokensLoader:
    """Appends the token ids of each batch's captions to ``[indexes, views, targets]`` batches.

    Args:
        loader (Iterable): yields ``[indexes, views, targets]`` (e.g. the synthetic DALI
            iterator), ``indexes`` being caption positions; its ``len`` is kept.
        captions (Sequence[str]): caption text of each index.
        tokenizer (CaptionTokenizer): captions -> (B, context_length) token ids.
    """

    def __init__(self, loader: Iterable, captions: Sequence[str], tokenizer: CaptionTokenizer):
        self.loader = loader
        self.captions = captions
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for indexes, views, targets in self.loader:
            captions = [self.captions[i] for i in indexes.tolist()]
            yield [indexes, views, targets, self.tokenizer(captions).to(indexes.device)]


def load_captions(cfg: omegaconf.DictConfig) -> tuple[list[str], list[str]]:
    """(caption ids, caption texts) of the synthetic data set of ``cfg``, in data set order, as lists.

    Ids are the manifest's ``caption_id`` or, for the authors' CSV, the row's position (the ids
    :class:`~solo_stablerep.data.index.CaptionIndex` gives). Lists hold a Python string per caption:
    for large data sets use the index's ``captions`` sequence instead (as :func:`with_caption_tokens`).
    """

    from solo_stablerep.data.config import open_reader

    index = open_reader(cfg).index
    return list(index.caption_ids), list(index.captions)


def check_caption_data(cfg: omegaconf.DictConfig) -> None:
    """One-line InputError unless ``cfg``'s training data can carry captions."""

    if cfg.data.dataset != "synthetic":
        raise InputError(
            f"method {cfg.method} trains on captions: set data.dataset=synthetic (got "
            f"data.dataset={cfg.data.dataset}, which has no captions)"
        )


def with_caption_tokens(cfg: omegaconf.DictConfig, train_data: Any) -> Any:
    """The synthetic training data of ``cfg`` with each batch's caption tokens appended.

    A ``DataLoader`` is rebuilt over :class:`CaptionTokensDataset` (solo-learn's settings:
    shuffled, last partial batch dropped, ``data.num_workers``); a DALI data module (anything
    with ``train_dataloader``) gets its training iterator wrapped in :class:`CaptionTokensLoader`;
    the WebDataset shard loaders read each sample's caption themselves (``with_caption_tokens``).
    The context length is ``method_kwargs.context_length`` (default 77).
    """

    check_caption_data(cfg)
    tokenizer = CaptionTokenizer(cfg.method_kwargs.get("context_length", DEFAULT_CONTEXT_LENGTH))
    if hasattr(
        train_data, "with_caption_tokens"
    ):  # WebDataset shards: each sample holds its caption
        return train_data.with_caption_tokens(tokenizer)
    source = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    captions = source.index.captions  # the data set's own index: the same captions, in its order

    if isinstance(train_data, DataLoader):
        from solo.data.pretrain_dataloader import prepare_dataloader

        return prepare_dataloader(
            CaptionTokensDataset(train_data.dataset, captions, tokenizer),
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
        )
    train_dataloader = train_data.train_dataloader
    train_data.train_dataloader = lambda: CaptionTokensLoader(
        train_dataloader(), captions, tokenizer
    )
    return train_data
