"""DALI loader for WebDataset shards (``data.synthetic.layout: webdataset``, ``data.format: dali``).

The shards are read as the PyTorch loader reads them (:class:`~solo_stablerep.data.webdataset.ShardStream`:
this rank's share of the tars, read through their index files, a shuffle buffer, ``n_img`` of a
sample's m images drawn afresh at each visit and read alone, each image's header checked so that a
corrupt one is named, or skipped and counted with ``data.synthetic.skip_corrupt``). The n encoded
images of each caption then go to the same DALI pipeline as the manifest layout's
(:func:`~solo_stablerep.data.synthetic_dali.synthetic_pipeline`): one batch of n x B images, decoded
(``mixed`` on GPU) and augmented by one chain of operators.

Why not ``fn.readers.webdataset``: it yields one sample per caption, so the n views took n chains
of operators of batch B each, and ran at 0.86x the manifest loader's items per second on CPU
(``bench/bench_shards.py``). The source runs in the training process, beside DALI's threads, so
its cost matters: 1.2 ms a batch of 8 captions x 6 images, against 1.6 ms for the manifest layout's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import omegaconf

from solo_stablerep.data.sampling import large_crop_slots
from solo_stablerep.data.synthetic_dali import (
    RECENT_BATCHES,
    DALIDataModule,
    SyntheticDALIIterator,
    decode_failure,
    synthetic_pipeline,
)
from solo_stablerep.data.transforms import build_image_transform
from solo_stablerep.data.webdataset import ShardSet, ShardStream, shuffle_buffer
from solo_stablerep.errors import SyntheticDataError


class ShardBatchSource:
    """Iterable for ``fn.external_source`` (the shard counterpart of ``CaptionBatchSource``): each
    ``next`` gives one batch of B captions as three image-major lists of n x B samples (encoded
    images, labels, caption indices); one ``iter`` is one epoch of ``len(stream)`` batches.

    With ``keep_captions`` it remembers the caption of each index it has handed to DALI until
    :meth:`caption_of` is asked for it (StableRep++'s tokens; DALI runs ahead of the iterator).
    """

    def __init__(
        self, stream: ShardStream, rank: int, world_size: int, keep_captions: bool = False
    ):
        self.stream = stream
        self.rank, self.world_size = rank, world_size
        self.keep_captions = keep_captions
        self.epoch = 0
        self._in_flight: dict[int, list] = {}  # index -> [caption, batches holding it not yet read]
        self._recent = deque(maxlen=RECENT_BATCHES)  # samples of the batches DALI may be decoding

    def batches_per_epoch(self) -> int:
        self.stream.rank, self.stream.world_size = self.rank, self.world_size
        return len(self.stream)

    def __iter__(self):
        stream = self.stream
        stream.rank, stream.world_size, stream.epoch = self.rank, self.world_size, self.epoch
        rng = np.random.default_rng([stream.seed, self.epoch, self.rank])
        self._items = stream.items(self.rank, self.world_size, rng, stream.encoded_item)
        self._left = len(stream)
        self.epoch += 1
        return self

    def __next__(self):
        if self._left == 0:
            raise StopIteration
        self._left -= 1
        items = [next(self._items) for _ in range(self.stream.batch_size)]
        # the samples, not their images: holding a few batches' images alive costs the allocator
        self._recent.append([sample for _, _, _, _, sample in items])
        if self.keep_captions:
            for index, _, _, caption, _ in items:
                self._in_flight.setdefault(index, [caption, 0])[1] += 1
        n = self.stream.n_img
        encoded = [images[k] for k in range(n) for _, images, _, _, _ in items]
        labels = [np.array([label], dtype=np.int64) for _, _, label, _, _ in items] * n
        indexes = [np.array([index], dtype=np.int64) for index, _, _, _, _ in items] * n
        return encoded, labels, indexes

    def decode_failure(self, error: Exception) -> SyntheticDataError:
        """Names the sample of the recent batches whose image DALI's decoder failed on (its
        images read again from the tar)."""
        samples = [sample for batch in self._recent for sample in batch]
        culprits = (
            (f"{sample['__url__']}: sample {sample['__key__']}", sample[component])
            for sample in samples
            for component in sample
            if not component.startswith("__") and component != "json"
        )
        first_tar = samples[0]["__url__"] if samples else "?"
        return decode_failure(error, culprits, f"{len(samples)} samples of {first_tar}...")

    def caption_of(self, index: int) -> str:
        entry = self._in_flight[index]
        entry[1] -= 1
        if entry[1] == 0:
            del self._in_flight[index]
        return entry[0]


class ShardDALIIterator(SyntheticDALIIterator):
    """:class:`SyntheticDALIIterator` over a :class:`ShardBatchSource`, plus each caption's token ids
    when a tokenizer is given (StableRep++)."""

    def __init__(
        self,
        pipeline,
        n_img: int,
        large_slots: Sequence[bool],
        source: ShardBatchSource,
        tokenizer: Callable | None = None,
    ):
        self.tokenizer = tokenizer
        super().__init__(pipeline, n_img, large_slots, source)

    def __next__(self):
        batch = super().__next__()
        if self.tokenizer is not None:
            indexes = batch[0]
            captions = [self.source.caption_of(i) for i in indexes.tolist()]
            batch.append(self.tokenizer(captions).to(indexes.device))
        return batch


class ShardDALIDataModule(DALIDataModule):
    """Training data from shards with DALI; built by :meth:`from_cfg`.

    Cfg keys read: ``data.synthetic.*``, ``augmentations``, ``optimizer.batch_size`` (captions per
    process), ``data.num_workers`` (DALI threads), ``dali.device``, ``seed``.
    """

    def __init__(
        self,
        shards: ShardSet,
        transform: Callable,
        large_slots: Sequence[bool],
        n_img: int,
        batch_size: int,
        num_workers: int,
        dali_device: str,
        seed: int,
        shuffle_buffer: int,
        skip_corrupt: bool = False,
        tokenizer: Callable | None = None,
    ):
        super().__init__(transform, large_slots, n_img, batch_size, num_workers, dali_device, seed)
        # the stream only reads, checks and draws images here: DALI decodes and augments them
        self.stream = ShardStream(
            shards,
            n_img,
            image_transform=None,
            large_slots=large_slots,
            batch_size=batch_size,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            skip_corrupt=skip_corrupt,
        )
        self.tokenizer = tokenizer

    @property
    def skipped(self):
        return self.stream.skipped

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig, shards: ShardSet) -> ShardDALIDataModule:
        return cls(
            shards,
            transform=build_image_transform(cfg, dali=True),
            large_slots=large_crop_slots(cfg.augmentations),
            n_img=cfg.data.synthetic.n_img,
            batch_size=cfg.optimizer.batch_size,
            num_workers=cfg.data.num_workers,
            dali_device=cfg.dali.device,
            seed=cfg.seed,
            shuffle_buffer=shuffle_buffer(cfg),
            skip_corrupt=cfg.data.synthetic.skip_corrupt,
        )

    def with_caption_tokens(self, tokenizer: Callable) -> ShardDALIDataModule:
        """Appends each sample's caption tokens to the batches (StableRep++); call before ``setup``."""
        self.tokenizer = tokenizer
        return self

    def build_loader(
        self, rank: int = 0, world_size: int = 1, local_rank: int = 0
    ) -> ShardDALIIterator:
        source = ShardBatchSource(
            self.stream, rank, world_size, keep_captions=self.tokenizer is not None
        )
        pipeline = synthetic_pipeline(
            source=source,
            transform=self.transform,
            dali_device=self.dali_device,
            batch_size=self.batch_size * self.n_img,
            **self.pipeline_options(rank, local_rank),
        )
        pipeline.build()
        return ShardDALIIterator(pipeline, self.n_img, self.large_slots, source, self.tokenizer)
