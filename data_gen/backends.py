"""Image sources behind one interface, chosen by name: ``--backend NAME`` builds ``BACKENDS[NAME]``.

A backend turns prompts and per-image seeds into images (:class:`Backend`). Adding one (e.g. SDXL
or a latent-consistency model) is one class decorated with ``@register_backend("name")``: the CLI
offers it, :class:`~data_gen.settings.GenerationSettings` validates and stores the settings it lists
in ``settings_fields`` (and stores the others as null), and the runner builds it with
:func:`load_backend`. torch and diffusers load only when a backend is built, so the settings and
the CLI can read the registry without them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar, Protocol

from PIL import Image

from solo_stablerep.errors import DataGenError, first_line

from .procedural import render

logger = logging.getLogger(__name__)

# --dtype name -> torch dtype attribute
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# --scheduler name -> (diffusers class, from_config overrides)
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}


class Backend(Protocol):
    """What the runner needs from an image source."""

    #: The settings of :data:`BACKEND_FIELDS` this backend reads (model,
    #: scheduler, ...): only these are validated and stored; the others are stored as null.
    settings_fields: ClassVar[tuple[str, ...]]

    def __init__(self, settings, device: str) -> None:
        """``settings``: the run's validated, resolved ``GenerationSettings``; ``device``: like
        ``cuda:0``."""

    def is_truncated(self, prompt: str) -> bool:
        """Whether the model sees only part of ``prompt`` (counted in the run's summary)."""

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        """One list of images per prompt, at the generation resolution; ``seeds[i][k]`` is the seed
        of image k of prompt i, and decides it whatever the batch."""


BACKENDS: dict[str, type[Backend]] = {}
# The settings that only some backends read (GenerationSettings' fields); each backend lists its own
# in `settings_fields`: a run validates and stores those, and stores the others as null.
BACKEND_FIELDS = (
    "model",
    "scheduler",
    "guidance_scale",
    "num_inference_steps",
    "dtype",
    "negative_prompt",
)


def register_backend(name: str):
    """Class decorator: makes a :class:`Backend` selectable as ``--backend name``."""

    def register(cls: type[Backend]) -> type[Backend]:
        if name in BACKENDS:
            raise ValueError(
                f"backend {name!r} is already registered ({BACKENDS[name].__qualname__})"
            )
        BACKENDS[name] = cls
        return cls

    return register


def load_backend(settings, device: str) -> Backend:
    """The backend ``settings.backend`` names (settings already validated), built for ``device``."""
    return BACKENDS[settings.backend](settings, device)


def scheduler_for(name: str, config):
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)


def load_pipeline(model: str, dtype, device: str):
    """`StableDiffusionPipeline.from_pretrained` (safetensors, no safety checker); one-line error
    if the model is absent."""
    import diffusers
    from diffusers import StableDiffusionPipeline
    from packaging.version import Version

    looks_local = model.startswith((".", "/", "~")) or Path(model).exists()
    if looks_local and not Path(model).expanduser().is_dir():
        raise DataGenError(f"--model {model}: no such folder")
    # diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name still works, with a warning)
    dtype_argument = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(Path(model).expanduser()) if looks_local else model,
            **{dtype_argument: dtype},
            use_safetensors=True,
            safety_checker=None,  # a filter would blacken images and bias the data set
            requires_safety_checker=False,
        )
    except Exception as e:  # hub, file and config errors all mean "cannot use this model"
        raise DataGenError(
            f"--model {model}: cannot load a Stable Diffusion pipeline ({first_line(e)})"
        ) from None
    return pipe.to(device)


@register_backend("diffusion")
class DiffusionBackend:
    """Stable Diffusion via diffusers: one pipeline call per batch of captions, k images each."""

    settings_fields = BACKEND_FIELDS  # Stable Diffusion reads every one

    def __init__(self, settings, device: str):
        import torch
        from diffusers.models.attention_processor import AttnProcessor2_0

        started = time.perf_counter()
        self.settings = settings
        self.pipe = load_pipeline(
            settings.model, getattr(torch, TORCH_DTYPES[settings.dtype]), device
        )
        self.pipe.scheduler = scheduler_for(settings.scheduler, self.pipe.scheduler.config)
        self.pipe.unet.set_attn_processor(
            AttnProcessor2_0()
        )  # PyTorch SDPA (flash / memory-efficient)
        self.pipe.vae.set_attn_processor(AttnProcessor2_0())
        self.pipe.set_progress_bar_config(disable=True)
        # We count truncated captions ourselves; the pipeline would log every one of them.
        logging.getLogger(
            "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion"
        ).setLevel(logging.ERROR)
        self.tokenizer = self.pipe.tokenizer
        logger.info(
            "loaded %s (%s, %s) on %s in %.1f s",
            settings.model,
            settings.dtype,
            settings.scheduler,
            device,
            time.perf_counter() - started,
        )

    def is_truncated(self, prompt: str) -> bool:
        return (
            len(self.tokenizer(prompt, truncation=False).input_ids)
            > self.tokenizer.model_max_length
        )

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        import torch

        k = self.settings.images_per_caption
        # CPU generators give the same starting noise on any device; one per image, in the
        # pipeline's order (prompt-major), so an image never depends on its batch neighbours.
        generators = [torch.Generator("cpu").manual_seed(seed) for row in seeds for seed in row]
        size = self.settings.resolution
        images = self.pipe(
            prompts,
            height=size,
            width=size,
            num_inference_steps=self.settings.num_inference_steps,
            guidance_scale=self.settings.guidance_scale,
            negative_prompt=[self.settings.negative_prompt] * len(prompts)
            if self.settings.negative_prompt
            else None,
            num_images_per_prompt=k,  # text embeddings are computed once per prompt, then repeated
            generator=generators,
        ).images
        return [images[i * k : (i + 1) * k] for i in range(len(prompts))]


@register_backend("procedural")
class ProceduralBackend:
    """Weights-free renderer of what a caption names (`data_gen.procedural`): not SD."""

    settings_fields = ()

    def __init__(self, settings, device: str):
        self.settings = settings

    def is_truncated(self, prompt: str) -> bool:
        return False

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        return [
            [render(prompt, seed, self.settings.resolution) for seed in row]
            for prompt, row in zip(prompts, seeds, strict=True)
        ]
