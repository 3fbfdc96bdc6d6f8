"""Image transforms: solo-learn's augmentation pipelines, built in one place for every loader, and
StableRep's downsample augmentation (PIL and DALI versions).

The downsample augmentation follows the authors' ``DownSampleAndUpsample``
(StableRep/dataset/util.py): ``transforms.Resize(res)`` then back up, i.e. bilinear with
antialiasing both ways, shorter side to ``res`` and the longer side truncated as torchvision does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import omegaconf
import torch
from PIL import Image
from solo.data.pretrain_dataloader import (
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
)
from torchvision import transforms


class RandomDownsample:
    """StableRep's downsample augmentation: with probability ``prob`` resize the image so its
    shorter side is one of ``sizes`` (chosen uniformly), then back to its original size (PIL,
    bilinear)."""

    def __init__(self, prob: float, sizes: Sequence[int]):
        self.prob = prob
        self.sizes = list(sizes)

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.prob:
            return img
        size = self.sizes[torch.randint(len(self.sizes), ()).item()]
        w, h = img.size
        # torchvision's Resize(int): shorter side = size, longer side truncated
        small = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        return img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)

    def __repr__(self) -> str:
        return f"RandomDownsample(prob={self.prob}, sizes={self.sizes})"


class DALIRandomDownsample:
    """DALI version of :class:`RandomDownsample` (needs a pipeline with conditionals enabled),
    followed by the DALI pipeline ``then``; ``INTERP_LINEAR`` with antialiasing is DALI's
    bilinear."""

    def __init__(self, prob: float, sizes: Sequence[int], device: str, then: Callable):
        self.prob, self.device, self.then = prob, device, then
        self.sizes = np.array(sizes, dtype=np.float32)

    def __call__(self, images):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        if fn.random.coin_flip(probability=self.prob, dtype=types.DALIDataType.BOOL):
            shape = images.shape(dtype=types.FLOAT)
            resize = dict(device=self.device, interp_type=types.INTERP_LINEAR, antialias=True)
            small = fn.resize(images, resize_shorter=fn.random.choice(self.sizes), **resize)
            out = fn.resize(small, resize_x=shape[1], resize_y=shape[0], **resize)
        else:
            out = images
        return self.then(out)

    def __repr__(self) -> str:
        return f"DALIRandomDownsample(prob={self.prob}, sizes={self.sizes.tolist()}) -> {self.then}"


def build_image_transform(cfg: omegaconf.DictConfig, dali: bool = False) -> FullTransformPipeline:
    """Image -> its crops: solo-learn's pipelines from ``cfg.augmentations`` (``num_crops`` each),
    for PIL images or, with ``dali``, for DALI graphs (``dali.device``). For ``data.dataset:
    synthetic``, each pipeline is preceded by the downsample augmentation when
    ``data.synthetic.downsample.prob`` > 0."""
    downsample = None
    if cfg.data.dataset == "synthetic" and cfg.data.synthetic.downsample.prob > 0:
        downsample = cfg.data.synthetic.downsample
    pipelines = []
    for aug_cfg in cfg.augmentations:
        if dali:
            from solo.data.dali_dataloader import build_transform_pipeline_dali

            transform = build_transform_pipeline_dali(
                cfg.data.dataset, aug_cfg, dali_device=cfg.dali.device
            )
            if downsample is not None:
                transform = DALIRandomDownsample(
                    downsample.prob, downsample.sizes, cfg.dali.device, transform
                )
        else:
            transform = build_transform_pipeline(cfg.data.dataset, aug_cfg)
            if downsample is not None:
                transform = transforms.Compose(
                    [RandomDownsample(downsample.prob, downsample.sizes), transform]
                )
        pipelines.append(NCropAugmentation(transform, aug_cfg.num_crops))
    return FullTransformPipeline(pipelines)
