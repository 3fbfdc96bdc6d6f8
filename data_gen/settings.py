"""Generation settings, their validation (of the fields the chosen backend reads), per-image seeds
and part/device resolution."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

from solo_stablerep.errors import DataGenError
from solo_stablerep.rules import at_least, integer

from .backends import BACKEND_FIELDS, BACKENDS, SCHEDULERS

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
DTYPES = ("auto", "fp32", "fp16", "bf16")

# what each number of GenerationSettings must be: checked by validate(), and the command line's
# option types (data_gen/cli.py) are made from the same rules
NUMBERS = {
    "guidance_scale": at_least(0),
    "num_inference_steps": integer(1),
    "images_per_caption": integer(1, 100),  # image file names use 2 digits
    "resolution": integer(8),  # and a multiple of 8: the VAE's downsampling
    "image_size": integer(1),
    "quality": integer(1, 100),  # JPEG/WebP quality
    "seed": integer(0),
}


def option_name(field: str) -> str:
    """The ``stablerep-generate`` option that sets a GenerationSettings field."""
    return "steps" if field == "num_inference_steps" else field.replace("_", "-")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the pixels of the data set (paper defaults).

    Batch size, part count and device are absent on purpose: they change speed, not images.
    """

    backend: str = "diffusion"
    model: str | None = DEFAULT_MODEL
    scheduler: str | None = "ddim"
    guidance_scale: float | None = 2.0
    num_inference_steps: int | None = 50
    images_per_caption: int = 10
    resolution: int = 512
    image_size: int = 256
    image_format: str = "jpg"
    quality: int = 95
    dtype: str | None = "auto"
    seed: int = 0
    negative_prompt: str | None = None

    def validate(self) -> GenerationSettings:
        """Reject bad values before anything heavy happens; return self."""
        if self.backend not in BACKENDS:
            raise DataGenError(f"--backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        used = self.backend_fields()
        for name, rule in NUMBERS.items():
            value = getattr(self, name)
            if (name in used or name not in BACKEND_FIELDS) and not rule.accepts(value):
                raise DataGenError(f"--{option_name(name)} {value}: must {rule.text}")
        if self.resolution % 8:
            raise DataGenError(f"--resolution {self.resolution}: must be a multiple of 8")
        if self.image_format not in IMAGE_FORMATS:
            raise DataGenError(
                f"--image-format {self.image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}"
            )
        if "scheduler" in used and self.scheduler not in SCHEDULERS:
            raise DataGenError(
                f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"
            )
        if "dtype" in used and self.dtype not in DTYPES:
            raise DataGenError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if "model" in used and not self.model:
            raise DataGenError("--model: give a hub id or a local folder")
        return self

    def backend_fields(self) -> tuple[str, ...]:
        """The :data:`BACKEND_FIELDS` the chosen backend reads (its class's ``settings_fields``)."""
        return BACKENDS[self.backend].settings_fields

    def resolved(self, device: str) -> GenerationSettings:
        """Settings as stored: `auto` dtype made concrete, fields the backend ignores set to
        None."""
        used = self.backend_fields()
        settings = dataclasses.replace(
            self, **{name: None for name in BACKEND_FIELDS if name not in used}
        )
        if "dtype" not in used:
            return settings
        on_gpu = device.startswith("cuda")
        dtype = ("fp16" if on_gpu else "fp32") if self.dtype == "auto" else self.dtype
        if not on_gpu and dtype != "fp32":
            raise DataGenError(f"--dtype {dtype}: half precision needs a GPU; use fp32 on {device}")
        return dataclasses.replace(settings, dtype=dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def image_seed(global_seed: int, caption_id: str, k: int) -> int:
    """Seed of image k of a caption: a 63-bit hash of (global seed, caption id, k).

    Depends on nothing else, so an image is the same whatever the batch size, part count or resume
    point.
    """
    digest = hashlib.sha256(f"{global_seed}/{caption_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_part(num_parts: int | None, part_index: int | None, env=os.environ) -> tuple[int, int]:
    """(num_parts, part_index) of this process: from the flags, else torchrun's WORLD_SIZE/RANK,
    else SLURM's, else (1, 0)."""
    if num_parts is None and part_index is None:
        for size_var, rank_var in (("WORLD_SIZE", "RANK"), ("SLURM_NTASKS", "SLURM_PROCID")):
            if size_var in env and rank_var in env:
                num_parts, part_index = int(env[size_var]), int(env[rank_var])
                break
        else:
            num_parts, part_index = 1, 0
    elif num_parts is None or part_index is None:
        raise DataGenError("--num-parts and --part-index go together: give both or neither")
    if num_parts < 1:
        raise DataGenError(f"--num-parts {num_parts}: must be >= 1")
    if not 0 <= part_index < num_parts:
        raise DataGenError(f"--part-index {part_index}: must be in [0, {num_parts})")
    return num_parts, part_index


def resolve_device(device: str | None, env=os.environ) -> str:
    """The flag if given; else this process's GPU (LOCAL_RANK / SLURM_LOCALID), else the CPU."""
    if device:
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    return f"cuda:{local_rank % torch.cuda.device_count()}"
