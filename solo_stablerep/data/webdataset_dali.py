"""DALI loader for WebDataset shards (``data.synthetic.layout: webdataset``, ``data.format: dali``).

``fn.readers.webdataset`` reads each sample's JSON and its m encoded images using the shards' index
files, split evenly across ranks (``pad_last_batch``: equal sample counts, so equal batch counts) and
shuffled through a buffer. The pipeline then picks ``n_img`` distinct images per sample, uniformly
(sequential draws with ``fn.random.choice``, each excluding the images already drawn), so only those
are decoded (``mixed`` on GPU, ``cpu`` otherwise) and passed through solo-learn's DALI augmentations.
The iterator reads index, label (and, for StableRep++, caption) from each sample's JSON.
"""

from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import omegaconf
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from solo_stablerep.data.sampling import large_crop_slots, order_views
from solo_stablerep.data.shards import image_component, index_path
from solo_stablerep.data.synthetic_dali import DALIDataModule
from solo_stablerep.data.transforms import build_image_transform
from solo_stablerep.data.webdataset import ShardDataError, ShardSet, shuffle_buffer

_SPACE = 32  # pads each batch's JSON texts to one length; JSON ignores trailing spaces


def choose_images(encoded: Sequence, n_img: int) -> list:
    """``n_img`` of a sample's images, a uniformly random subset in random order, as DALI nodes.

    ``encoded[k]`` is image k's bytes (empty when the sample has fewer images). Each draw is
    ``fn.random.choice`` over the images not drawn yet; the chosen bytes are taken from the images
    zero-padded to the sample's longest one and stacked (decoders ignore bytes after the image's end).
    """
    m = len(encoded)
    ks = types.Constant(np.arange(m, dtype=np.int32))
    available = fn.cast(fn.stack(*[e.shape()[0] > 0 for e in encoded]), dtype=types.FLOAT)
    drawn = []
    for _ in range(n_img):
        k = fn.random.choice(m, p=available / fn.reductions.sum(available))
        available = available * fn.cast(ks != k, dtype=types.FLOAT)
        drawn.append(k)
    longest = fn.cast(fn.reductions.max(fn.stack(*[e.shape()[0] for e in encoded])), dtype=types.INT32)
    padded = [fn.pad(e, axes=(0,), shape=fn.stack(longest), fill_value=0) for e in encoded]
    stacked = fn.stack(*padded)
    chosen = fn.sequence_rearrange(stacked, new_order=fn.stack(*drawn))
    views = fn.element_extract(chosen, element_map=list(range(n_img)))
    return views if isinstance(views, list) else [views]


@pipeline_def(enable_conditionals=True)  # solo-learn's DALI augmentations use conditionals
def shard_pipeline(tars: Sequence[str], num_images: int, image_ext: str, n_img: int, transform: Callable,
                   dali_device: str, shard_id: int, num_shards: int, shuffle_buffer: int):
    """Outputs the crops of each of the ``n_img`` chosen images (image-major), then the samples' JSON."""
    meta, *encoded = fn.readers.webdataset(
        paths=list(tars), index_paths=[str(index_path(t)) for t in tars],
        ext=["json"] + [image_component(k, image_ext) for k in range(num_images)],
        missing_component_behavior="empty", random_shuffle=True, initial_fill=shuffle_buffer,
        shard_id=shard_id, num_shards=num_shards, pad_last_batch=True, name="Reader",
    )
    chosen = choose_images(encoded, n_img)
    decoder_device = "mixed" if dali_device == "gpu" else "cpu"
    crops = [c for image in chosen
             for c in transform(fn.decoders.image(image, device=decoder_device, output_type=types.RGB))]
    return (*crops, fn.pad(meta, fill_value=_SPACE))


class ShardDALIIterator(DALIGenericIterator):
    """Yields solo-learn's ``[indexes, [views...], targets]`` (plus caption tokens when a tokenizer
    is given) from :func:`shard_pipeline`."""

    def __init__(self, pipeline, n_img: int, large_slots: Sequence[bool], run_id: str,
                 tokenizer: Optional[Callable] = None):
        self.n_img = n_img
        self.large_slots = list(large_slots)
        self.run_id = run_id
        self.tokenizer = tokenizer
        crops = [f"img{i}_crop{j}" for i in range(n_img) for j in range(len(self.large_slots))]
        super().__init__(pipeline, crops + ["json"], reader_name="Reader",
                         last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    def __next__(self):
        batch = super().__next__()[0]
        per_image_crops = [[batch[f"img{i}_crop{j}"] for j in range(len(self.large_slots))]
                           for i in range(self.n_img)]
        metas = [json.loads(bytes(row.cpu().numpy())) for row in batch["json"]]
        for meta in metas:
            if meta["run_id"] != self.run_id:
                raise ShardDataError(f"sample {meta['caption_id']} is from generation run {meta['run_id']}, "
                                     f"not {self.run_id}: shards of two runs are mixed")
        device = per_image_crops[0][0].device
        indexes = torch.tensor([m["index"] for m in metas], device=device)
        labels = torch.tensor([-1 if m["label"] is None else m["label"] for m in metas], device=device)
        out = [indexes, order_views(per_image_crops, self.large_slots), labels]
        if self.tokenizer is not None:
            out.append(self.tokenizer([m["caption"] for m in metas]).to(device))
        return out


class ShardDALIDataModule(DALIDataModule):
    """Training data from shards with DALI; built by :meth:`from_cfg`.

    Cfg keys read: ``data.synthetic.*``, ``augmentations``, ``optimizer.batch_size`` (captions per
    process), ``data.num_workers`` (DALI threads), ``dali.device``, ``seed``.
    """

    def __init__(self, shards: ShardSet, transform: Callable, large_slots: Sequence[bool], n_img: int,
                 batch_size: int, num_workers: int, dali_device: str, seed: int, shuffle_buffer: int,
                 tokenizer: Optional[Callable] = None):
        super().__init__(transform, large_slots, n_img, batch_size, num_workers, dali_device, seed)
        shards.check(n_img)
        self.shards = shards
        self.shuffle_buffer = shuffle_buffer
        self.tokenizer = tokenizer

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig, shards: ShardSet) -> "ShardDALIDataModule":
        if cfg.data.synthetic.skip_corrupt:  # DALI's reader and decoder stop at a broken sample
            raise ShardDataError("data.synthetic.skip_corrupt=True: not available for shards with "
                                 "data.format=dali; use the PyTorch loader (data.format=image_folder)")
        return cls(shards, transform=build_image_transform(cfg, dali=True), large_slots=large_crop_slots(cfg.augmentations),
                   n_img=cfg.data.synthetic.n_img, batch_size=cfg.optimizer.batch_size,
                   num_workers=cfg.data.num_workers, dali_device=cfg.dali.device, seed=cfg.seed,
                   shuffle_buffer=shuffle_buffer(cfg))

    def with_caption_tokens(self, tokenizer: Callable) -> "ShardDALIDataModule":
        """Appends each sample's caption tokens to the batches (StableRep++); call before ``setup``."""
        self.tokenizer = tokenizer
        return self

    def build_loader(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> ShardDALIIterator:
        pipeline = shard_pipeline(
            tars=[str(t) for t in self.shards.tars], num_images=self.shards.most_images,
            image_ext=self.shards.image_ext, n_img=self.n_img, transform=self.transform,
            dali_device=self.dali_device, shard_id=rank, num_shards=world_size,
            shuffle_buffer=self.shuffle_buffer, batch_size=self.batch_size, **self.pipeline_options(rank, local_rank),
        )
        pipeline.build()
        return ShardDALIIterator(pipeline, self.n_img, self.large_slots, self.shards.run_id, self.tokenizer)
