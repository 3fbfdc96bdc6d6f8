"""Features of a frozen backbone over a data set split: extracted once, then read from the cache.

Extraction runs the backbone in eval mode under ``torch.inference_mode`` on batches decoded by a
``DataLoader`` (on the GPU when there is one), with a progress bar, streaming each batch's features
into the cache entry (:mod:`.cache`): a split's features are never held in memory, and what the
probes get back is a memory map of the finished file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.cache import FeatureCache, cache_key
from solo_stablerep.eval.datasets import Split

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
    device: str | None = None  # default: CUDA when available
    progress: bool = True

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.inference_mode()
def extract_batches(backbone: nn.Module, batches, device: torch.device, write: Callable) -> None:
    """``write(features)`` (float32 numpy, one row per image) for each batch of images."""
    for images in batches:
        features = backbone(images.to(device, non_blocking=True))
        write(features.float().cpu().numpy())


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
    cached."""
    key = cache_key(identity)
    cached = cache.load(key)
    if cached is not None:
        return cached
    backbone = get_backbone()
    device = settings.torch_device
    loader = DataLoader(
        _Images(split, transform),
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
    )
    batches = loader
    if settings.progress:
        from tqdm import tqdm

        batches = tqdm(
            loader, desc=f"features {description}", unit="batch", mininterval=1.0, leave=False
        )
    with cache.writer(key, identity, len(split)) as entry:
        entry.labels = np.asarray(split.labels)
        try:
            extract_batches(backbone.to(device), batches, device, entry.write)
        except EvalError as error:  # a corrupt image, possibly raised in a loader worker
            message = str(error)
            if message.startswith("Caught EvalError"):  # the worker's traceback: keep our line
                message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
            raise EvalError(message) from None
    log.info("features %s: %d x %d extracted", description, len(split), entry.dim)
    return cache.read_back(key)
