"""Features of a frozen backbone over a data set split: extracted once, then read from the cache.

Extraction runs the backbone in eval mode under ``torch.inference_mode`` on batches decoded by a
``DataLoader`` (on the GPU when there is one), with a progress bar, streaming each batch's features
into the cache entry's memory-mapped file (:mod:`.cache`): a split's features are never held in
memory, and what the probes get back is a memory map of the finished file. Under ``torchrun``
the ranks share the work (:func:`split_features`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.cache import FeatureCache, cache_key
from solo_stablerep.eval.datasets import Split
from solo_stablerep.eval.distributed import Ranks

log = logging.getLogger(__name__)


class _Images(Dataset):
    """A split's images through ``transform``."""

    def __init__(self, split: Split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.split.image(index))


@dataclass
class ExtractionSettings:
    batch_size: int = 128
    num_workers: int = 4
    device: str | None = None  # alone: default CUDA when available; under torchrun: ranks.device
    progress: bool = True
    ranks: Ranks = field(default_factory=Ranks)

    @property
    def torch_device(self) -> torch.device:
        if self.ranks.world_size > 1:
            return self.ranks.device
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.inference_mode()
def extract_batches(backbone: nn.Module, batches, device: torch.device, write: Callable) -> None:
    """``write(features)`` (float32 numpy, one row per image) for each batch of images."""
    for images in batches:
        features = backbone(images.to(device, non_blocking=True))
        write(features.float().cpu().numpy())


@torch.inference_mode()
def feature_dim(backbone: nn.Module, image: torch.Tensor, device: torch.device) -> int:
    """The width of ``backbone``'s features, from one image."""
    return backbone(image.unsqueeze(0).to(device)).shape[-1]


def split_features(
    cache: FeatureCache,
    identity: dict,
    split: Split,
    transform,
    get_backbone: Callable[[], nn.Module],
    settings: ExtractionSettings,
    description: str,
):
    """(features (N, D) memory map, labels) of ``split`` under ``identity`` (model, data set, split,
    transform): from the cache, else extracted with ``get_backbone()`` (called only then) and
    cached.

    Under ``torchrun`` every rank calls this for every split: each extracts its block of rows
    (:meth:`Ranks.share`) into the entry's one features file, allocated by rank 0; the entry is
    committed by rank 0 once every rank has written and flushed its rows, and each step is agreed
    on by all ranks: if any rank fails (a corrupt image, an interrupt), every rank raises and the
    pending file is removed; a rank that dies leaves the others failing at the next agreement. In
    either case no valid entry is left. A process extracting an entry holds its lock
    (:meth:`FeatureCache.writing`): another one wanting the same features (an evaluation sharing
    the cache folder) waits, then reads the entry (alone) or writes it again (torchrun)."""
    key = cache_key(identity)
    ranks = settings.ranks
    cached = cache.load(key)
    if ranks.all_agree(int(cached is not None)):
        return cached
    device = settings.torch_device
    images = _Images(split, transform)

    def allocate():
        backbone = get_backbone().to(device)
        if ranks.is_main:
            cache.create(key, len(split), feature_dim(backbone, images[0], device))
        return backbone

    def extract():
        rows = cache.open_pending(key)
        share = ranks.share(len(split))
        loader = DataLoader(
            Subset(images, share),
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            pin_memory=device.type == "cuda",
        )
        batches = loader
        if settings.progress and ranks.is_main:
            from tqdm import tqdm

            batches = tqdm(
                loader, desc=f"features {description}", unit="batch", mininterval=1.0, leave=False
            )
        position = share.start

        def write(features):
            nonlocal position
            rows[position : position + len(features)] = features
            position += len(features)

        try:
            extract_batches(backbone, batches, device, write)
        except EvalError as error:  # a corrupt image, possibly raised in a loader worker
            message = str(error)
            if message.startswith("Caught EvalError"):  # the worker's traceback: keep our line
                message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
            raise EvalError(message) from None
        if position != share.stop:
            raise RuntimeError(f"feature extraction wrote rows up to {position} of {share}")
        rows.flush()
        return rows.shape[1]

    def commit():
        if ranks.is_main:
            cache.commit(key, identity, np.asarray(split.labels))

    discard = (lambda: cache.discard(key)) if ranks.is_main else (lambda: None)
    with cache.writing(key) if ranks.is_main else nullcontext():
        if ranks.world_size == 1:  # ranks would have to agree on it: they extract again
            cached = cache.written_meanwhile(key)
            if cached is not None:
                return cached
        backbone = _together(ranks, allocate, discard)
        dim = _together(ranks, extract, discard)
        _together(ranks, commit, discard)
        log.info("features %s: %d x %d extracted", description, len(split), dim)
        return cache.read_back(key)


def _together(ranks: Ranks, step: Callable, on_failure: Callable):
    """``step()``'s value once every rank's step has succeeded; else ``on_failure()`` and this
    rank's own error, or, on a rank whose step succeeded, an error naming the failure elsewhere."""
    try:
        value, failure = step(), None
    except BaseException as error:  # an interrupt too: the other ranks must hear of it
        value, failure = None, error
    try:
        agreed = ranks.all_agree(int(failure is None))
    except BaseException:  # a rank died: the group is broken
        on_failure()
        raise
    if agreed == 0:
        on_failure()
        if failure is not None:
            raise failure
        raise EvalError(
            "feature extraction failed on another rank (see its message); nothing was cached"
        )
    return value
