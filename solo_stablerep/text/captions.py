"""Captions for methods that need them (``needs_captions = True``, e.g. StableRep++).

The synthetic data set (:mod:`solo_stablerep.data.synthetic`) yields ``(index, views, target)``,
where ``index`` is the caption's position in its data set. :class:`CaptionTokensDataset` wraps
it and appends that caption's CLIP token ids: ``(index, views, target, tokens)``, tokenized in
the DataLoader workers. The DALI loader carries no text, but its batches carry the caption
indices: :class:`CaptionTokensLoader` appends the tokens to each of its batches (tokenized in
the training process, one batch of captions per step). The caption texts are read here, from
the same sources and in the same order as the data set reads its captions: the manifest's
``caption`` fields (layout ``manifest``) or the second column of the authors' CSV (layout
``authors``).
"""

import csv
from pathlib import Path
from typing import Any, Iterable, List, Sequence, Tuple

import omegaconf
from torch.utils.data import DataLoader, Dataset

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


def load_captions(cfg: omegaconf.DictConfig) -> Tuple[List[str], List[str]]:
    """(caption ids, caption texts) of the synthetic data set of ``cfg``, in data set order.

    Ids are the manifest's ``caption_id`` or, for the authors' CSV, the CSV line number (the
    ids :class:`~solo_stablerep.data.synthetic.CaptionIndex` gives), so callers can check that
    both lists line up.
    """

    from solo_stablerep.data.manifest import read_manifest

    syn = cfg.data.synthetic
    base = Path(cfg.data.train_path)
    if syn.layout == "manifest":
        _, records = read_manifest(base)
        return [r.caption_id for r in records], [r.caption for r in records]

    ids, captions = [], []
    with open(base / syn.csv, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if syn.csv_header and line_no == 1:
                continue
            ids.append(str(line_no))
            captions.append(row[1])
    return ids, captions


def check_caption_data(cfg: omegaconf.DictConfig) -> None:
    """One-line ValueError unless ``cfg``'s training data can carry captions."""

    if cfg.data.dataset != "synthetic":
        raise ValueError(
            f"method {cfg.method} trains on captions: set data.dataset=synthetic (got "
            f"data.dataset={cfg.data.dataset}, which has no captions)"
        )


def with_caption_tokens(cfg: omegaconf.DictConfig, train_data: Any) -> Any:
    """The synthetic training data of ``cfg`` with each batch's caption tokens appended.

    A ``DataLoader`` is rebuilt over :class:`CaptionTokensDataset` (solo-learn's settings:
    shuffled, last partial batch dropped, ``data.num_workers``); a DALI data module (anything
    with ``train_dataloader``) gets its training iterator wrapped in :class:`CaptionTokensLoader`.
    The context length is ``method_kwargs.context_length`` (default 77).
    """

    check_caption_data(cfg)
    if getattr(train_data, "yields_caption_tokens", False):
        return train_data  # WebDataset shards: the loader reads each sample's caption itself
    ids, captions = load_captions(cfg)
    source = train_data.dataset if isinstance(train_data, DataLoader) else train_data
    index = getattr(source, "index", None)
    if index is not None and list(index.caption_ids) != ids:
        raise ValueError(
            f"captions of {cfg.data.train_path} do not line up with the data set's caption ids"
        )
    tokenizer = CaptionTokenizer(cfg.method_kwargs.get("context_length", DEFAULT_CONTEXT_LENGTH))

    if isinstance(train_data, DataLoader):
        from solo.data.pretrain_dataloader import prepare_dataloader

        return prepare_dataloader(
            CaptionTokensDataset(train_data.dataset, captions, tokenizer),
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
        )
    train_dataloader = train_data.train_dataloader
    train_data.train_dataloader = lambda: CaptionTokensLoader(train_dataloader(), captions, tokenizer)
    return train_data
