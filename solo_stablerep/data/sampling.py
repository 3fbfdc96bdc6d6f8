"""View sampling shared by both loaders: which images of a caption an item uses, and in what order.

An item is one caption. Each access draws ``n_img`` distinct readable images of it in a fresh random
order (:class:`ReadableImages`, the one place where a missing or corrupt file becomes a one-line
error, or is skipped and counted), and each image gives the crops of solo-learn's augmentations,
ordered as solo-learn's ``BaseMethod`` expects (:func:`order_views`).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.errors import SyntheticDataError

log = logging.getLogger(__name__)
T = TypeVar("T")


def large_crop_slots(augmentations) -> list[bool]:
    """For each crop one image yields (in ``cfg.augmentations`` order), whether it is a large crop.

    Same rule as solo-learn's ``parse_cfg``: large = crop_size equal to the first pipeline's.
    """
    big_size = augmentations[0].crop_size
    return [aug.crop_size == big_size for aug in augmentations for _ in range(aug.num_crops)]


def order_views(per_image_crops: Sequence[Sequence], large_slots: Sequence[bool]) -> list:
    """Flattens the crops of each image into solo-learn's view order: every image's large crops
    (image-major), then every image's small crops."""
    return [
        crops[j]
        for want_large in (True, False)
        for crops in per_image_crops
        for j, large in enumerate(large_slots)
        if large == want_large
    ]


class SkipCounter:
    """Images skipped as corrupt, counted across this process and the DataLoader workers it starts
    (a ``multiprocessing.Value``, inherited by forked or spawned workers)."""

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.Value("q", value)

    def add(self, n: int = 1) -> int:
        with self._shared.get_lock():
            self._shared.value += n
            return self._shared.value

    @property
    def value(self) -> int:
        return self._shared.value

    def __getstate__(self):
        # a worker being started shares the counter; any other pickling gets a detached copy
        return (
            {"shared": self._shared} if get_spawning_popen() is not None else {"value": self.value}
        )

    def __setstate__(self, state):
        self._shared = (
            state["shared"] if "shared" in state else multiprocessing.Value("q", state["value"])
        )


def corrupt_image_error(path: Path, caption_id: str, err: Exception) -> SyntheticDataError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return SyntheticDataError(
        f"{path}: corrupt image (caption {caption_id}): {reason}; "
        "set data.synthetic.skip_corrupt=True to skip such images"
    )


class ReadableImages:
    """Picks ``n_img`` readable images of a caption.

    Args:
        index (CaptionIndex): captions and their image paths.
        n_img (int): images wanted per caption.
        skip_corrupt (bool): skip an image that fails to decode (counted in ``skipped``, logged) and
            take the next one of the order, instead of raising.
    """

    def __init__(self, index: CaptionIndex, n_img: int, skip_corrupt: bool = False):
        index.check(n_img)
        self.index = index
        self.n_img = n_img
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()

    def pick(self, i: int, order: Iterable[int], read: Callable[[Path], T]) -> list[T]:
        """``read`` (path -> image; raises on a file it cannot decode) applied to the images of
        caption ``i`` in ``order`` until ``n_img`` succeed."""
        images: list[T] = []
        for k in order:
            path = self.index.image_path(i, k)
            try:
                images.append(read(path))
            except FileNotFoundError:
                raise SyntheticDataError(
                    f"{path}: image file missing (caption {self.index.caption_id(i)})"
                ) from None
            except Exception as e:  # any failure to decode: the decoders raise many types
                if not self.skip_corrupt:
                    raise corrupt_image_error(path, self.index.caption_id(i), e) from None
                total = self.skipped.add()
                log.warning(
                    "skipped corrupt image %s (caption %s), %d skipped so far",
                    path,
                    self.index.caption_id(i),
                    total,
                )
                continue
            if len(images) == self.n_img:
                return images
        raise SyntheticDataError(
            f"caption {self.index.caption_id(i)}: only {len(images)} readable images, "
            f"fewer than data.synthetic.n_img={self.n_img}"
        )


def checked_encoded_image(data: bytes) -> np.ndarray:
    """An encoded image's bytes for a decoder elsewhere (DALI), after a header check here, so that a
    corrupt image raises an error this package names (DALI's decoder error would not, and would
    leave its pipeline unusable, so nothing could be skipped after it). A JPEG must also end with
    its end-of-image marker (PNG and WebP headers already tell a file cut short): an O(1) check of
    the last two bytes on a complete file, the cut-short body that DALI's decoder rejects."""
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        if img.format == "JPEG" and not data.endswith(b"\xff\xd9") and not _jpeg_ends(data):
            raise OSError("JPEG data cut short (no end-of-image marker after its last scan)")
    return np.frombuffer(data, dtype=np.uint8)


def _jpeg_ends(data: bytes) -> bool:
    """Whether an end-of-image marker follows the last start-of-scan (data after it is allowed)."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")


def undecodable(data: bytes) -> str | None:
    """Why PIL cannot decode ``data`` fully, or None: used to name the image a decoder elsewhere
    (DALI) failed on, after the fact (a full decode is too slow for every image read)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as e:  # the decoders raise many types
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None
