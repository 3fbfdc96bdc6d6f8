"""DALI loader of the synthetic data set (``data.format: dali``), over any reader (:mod:`.readers`).

A Python source (:class:`BatchSource`) draws ``n_img`` images per caption through the reader (the
PyTorch loader's stream of items, without DataLoader workers), checks each image's header (so that
a corrupt one is named, or skipped with ``skip_corrupt``) and feeds one batch of n_img x captions
encoded images, image-major, to ``fn.external_source``; DALI decodes them (``mixed`` on GPU) and
applies solo-learn's DALI augmentations in one chain of operators. (``fn.readers.webdataset``
yields one sample per caption: n chains of batch B, 0.86x the items per second on CPU.)"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from solo_stablerep.data.config import DataConfig, order_views
from solo_stablerep.data.readers import Reader, Slot, checked_encoded_image, decode_rgb
from solo_stablerep.errors import InputError, first_line

# batches a source keeps a note of: DALI decodes up to its prefetch queue (2) + 1 behind the source
RECENT_BATCHES = 4


class BatchSource:
    """Iterable for ``fn.external_source``: each ``next`` gives one batch of ``batch_size`` captions
    as three lists of ``n_img * batch_size`` samples, image-major (sample s = image s // batch_size
    of caption s % batch_size): encoded images, labels, caption indices. One ``iter`` is one epoch
    of this rank's ``batches_per_epoch`` batches.

    With ``keep_captions`` it remembers the caption of each index it has handed to DALI until
    :meth:`caption_of` is asked for it (StableRep++'s tokens; DALI runs ahead of the iterator)."""

    def __init__(
        self, reader: Reader, data: DataConfig, rank=0, world_size=1, keep_captions=False, epoch=0
    ):
        self.reader, self.data = reader, data
        self.rank, self.world_size = rank, world_size
        self.keep_captions = keep_captions
        self.epoch = epoch  # of the next ``iter``: the trainer's after a resume
        self._in_flight: dict[int, list] = {}  # index -> [caption, batches holding it not yet read]
        self._recent = deque(maxlen=RECENT_BATCHES)  # items of the batches DALI may be decoding

    def batches_per_epoch(self) -> int:
        return self.reader.batches_per_epoch(self.world_size, self.data.batch_size)

    def __iter__(self):
        d = self.data
        slot = Slot(self.rank, self.world_size, 0, 1, self.epoch, d.seed, d.batch_size)
        self._items = self.reader.items(slot, checked_encoded_image)
        self._left = self.batches_per_epoch()
        self.epoch += 1
        return self

    def __next__(self):
        if self._left == 0:
            raise StopIteration  # the partial last batch is dropped, as in solo-learn
        self._left -= 1
        picked = [next(self._items) for _ in range(self.data.batch_size)]
        items = [item for item, _ in picked]
        # the items, not their images: holding a few batches' images alive costs the allocator
        self._recent.append(items)
        if self.keep_captions:
            for item in items:
                self._in_flight.setdefault(item.position, [item.caption(), 0])[1] += 1
        # image-major, so that the iterator's views are contiguous slices of DALI's output
        encoded = [images[k] for k in range(self.data.n_img) for _, images in picked]
        labels = [np.array([item.label], dtype=np.int64) for item in items] * self.data.n_img
        indexes = [np.array([item.position], dtype=np.int64) for item in items] * self.data.n_img
        return encoded, labels, indexes

    def caption_of(self, index: int) -> str:
        entry = self._in_flight[index]
        entry[1] -= 1
        if entry[1] == 0:
            del self._in_flight[index]
        return entry[0]

    def decode_failure(self, error: Exception) -> InputError:
        """The one-line error for a DALI decoder failure (its pipeline cannot skip the image after
        the fact): the first image of the batches DALI may be decoding that PIL cannot decode
        either (a full decode is too slow for every image read), else those batches' items."""
        items = [item for batch in self._recent for item in batch]
        for item in items:
            for k in range(item.num_images):
                try:
                    decode_rgb(item.read(k))
                    continue
                except Exception as e:  # the decoders raise many types; a file gone since too
                    reason = first_line(e)
                return self.reader.error(
                    f"{item.where(k)}: DALI could not decode this image ({reason}); remove or "
                    "regenerate it (the DALI pipeline cannot skip an image its decoder "
                    "rejects; data.format=image_folder with data.synthetic.skip_corrupt=True "
                    "can)"
                )
        lines = [line.strip() for line in str(error).splitlines() if "rror" in line]
        first = ", ".join(item.name for item in items[:4])
        return self.reader.error(
            f"DALI could not decode an image of {first}... "
            f"({lines[0] if lines else type(error).__name__}); PIL decodes them all: try "
            "data.format=image_folder"
        )


@pipeline_def(enable_conditionals=True)
def multi_view_pipeline(source: BatchSource, transform: Callable, dali_device: str):
    """Outputs each crop of solo-learn's augmentations, then labels and caption indices, for a batch
    of n_img x captions images (pipeline batch size = n_img x captions)."""
    encoded, labels, indexes = fn.external_source(
        source=source, num_outputs=3, batch=True, cycle="raise"
    )
    decoder_device = "mixed" if dali_device == "gpu" else "cpu"
    crops = transform(fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB))
    if dali_device == "gpu":
        labels, indexes = labels.gpu(), indexes.gpu()
    return (*crops, labels, indexes)


class MultiViewDALIIterator(DALIGenericIterator):
    """Yields solo-learn's batch format ``[indexes, [views...], targets]`` (plus each caption's
    token ids when a tokenizer is given) from :func:`multi_view_pipeline`'s image-major batches. A
    decoder failure is one line naming the image (:meth:`BatchSource.decode_failure`)."""

    def __init__(self, pipeline, source: BatchSource, tokenizer: Callable | None = None):
        self.n_img, self.large_slots = source.data.n_img, source.data.large_slots
        self.source, self.tokenizer = source, tokenizer
        self.batches_per_epoch = source.batches_per_epoch()
        output_map = [f"crop{j}" for j in range(len(self.large_slots))] + ["label", "index"]
        try:  # DALI's iterator runs the pipeline for its first batch already
            super().__init__(
                pipeline, output_map, last_batch_policy=LastBatchPolicy.DROP, auto_reset=True
            )
        except RuntimeError as error:
            raise self._failure(error) from None

    def _failure(self, error: RuntimeError) -> Exception:
        return self.source.decode_failure(error) if "decoders.image" in str(error) else error

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __next__(self):
        try:
            batch = super().__next__()[0]
        except RuntimeError as error:
            raise self._failure(error) from None
        b = self.batch_size // self.n_img  # captions per batch (DALI's batch_size counts images)
        # image k of every caption is samples k*b .. (k+1)*b - 1: contiguous views, no copy needed,
        # as DALI's iterator returns new tensors at every batch
        per_image_crops = [
            [batch[f"crop{j}"][k * b : (k + 1) * b] for j in range(len(self.large_slots))]
            for k in range(self.n_img)
        ]
        indexes, labels = (batch[name][:b].flatten().long() for name in ("index", "label"))
        out = [indexes, order_views(per_image_crops, self.large_slots), labels]
        if self.tokenizer is not None:
            captions = [self.source.caption_of(i) for i in indexes.tolist()]
            out.append(self.tokenizer(captions).to(indexes.device))
        return out


class DALIDataModule(pl.LightningDataModule):
    """Training data with DALI: one pipeline per rank, built by :meth:`train_dataloader`. Cfg keys
    read: see :class:`~solo_stablerep.data.config.DataConfig` (``data.num_workers`` = DALI threads,
    ``dali.device``: ``gpu`` decodes with ``mixed``, ``cpu`` runs a CPU-only pipeline)."""

    def __init__(self, reader: Reader, data: DataConfig, transform: Callable):
        super().__init__()
        if data.dali_device not in ("gpu", "cpu"):
            raise InputError(f"dali.device={data.dali_device}: choose gpu or cpu")
        self.reader, self.data, self.transform = reader, data, transform
        self.skipped = reader.skipped
        self.tokenizer = None

    def with_caption_tokens(self, tokenizer: Callable) -> DALIDataModule:
        """Appends each item's caption tokens to the batches (StableRep++), before building."""
        self.tokenizer = tokenizer
        return self

    def build_loader(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, epoch: int = 0):
        d = self.data
        source = BatchSource(self.reader, d, rank, world_size, self.tokenizer is not None, epoch)
        pipeline = multi_view_pipeline(
            source=source,
            transform=self.transform,
            dali_device=d.dali_device,
            batch_size=d.batch_size * d.n_img,
            num_threads=max(1, d.num_workers),
            seed=d.seed + rank,
            prefetch_queue_depth=2,
            device_id=local_rank if d.dali_device == "gpu" else None,
        )
        pipeline.build()
        return MultiViewDALIIterator(pipeline, source, self.tokenizer)

    def train_dataloader(self):
        # built here, not in setup: Lightning restores a checkpoint's epoch between the two, and
        # DALI reads the first batches of the epoch the source starts at as soon as it is built
        t = self.trainer
        epoch = t.fit_loop.epoch_progress.current.processed  # the epoch Lightning starts at
        return self.build_loader(t.global_rank, t.world_size, t.local_rank, epoch)
