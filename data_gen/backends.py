"""Image sources behind one interface: `generate(prompts, seeds) -> images`, one list per prompt.

`seeds[i][k]` is the seed of image k of prompt i; the images come back at the generation resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from .settings import DataGenError, GenerationSettings

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def scheduler_for(name: str, config):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    choices = {
        "ddim": (DDIMScheduler, {}),
        "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "dpm++-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        "euler": (EulerDiscreteScheduler, {}),
        "euler-a": (EulerAncestralDiscreteScheduler, {}),
        "unipc": (UniPCMultistepScheduler, {}),
        "pndm": (PNDMScheduler, {}),
    }
    cls, overrides = choices[name]
    return cls.from_config(config, **overrides)


def load_pipeline(model: str, dtype: torch.dtype, device: str):
    """`StableDiffusionPipeline.from_pretrained` (safetensors, no safety checker); one-line error if absent."""
    import diffusers
    from diffusers import StableDiffusionPipeline
    from packaging.version import Version

    looks_local = model.startswith((".", "/", "~")) or Path(model).exists()
    if looks_local and not Path(model).expanduser().is_dir():
        raise DataGenError(f"--model {model}: no such folder")
    # diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name still works there, with a warning).
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataGenError(f"--model {model}: cannot load a Stable Diffusion pipeline ({reason})") from None
    return pipe.to(device)


class DiffusionBackend:
    """Stable Diffusion via diffusers: one pipeline call per batch of captions, k images each."""

    def __init__(self, settings: GenerationSettings, device: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.settings = settings
        self.pipe = load_pipeline(settings.model, TORCH_DTYPES[settings.dtype], device)
        self.pipe.scheduler = scheduler_for(settings.scheduler, self.pipe.scheduler.config)
        self.pipe.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA (flash / memory-efficient)
        self.pipe.vae.set_attn_processor(AttnProcessor2_0())
        self.pipe.set_progress_bar_config(disable=True)
        # We count truncated captions ourselves; the pipeline would log every one of them.
        logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion").setLevel(logging.ERROR)
        self.tokenizer = self.pipe.tokenizer

    def is_truncated(self, prompt: str) -> bool:
        return len(self.tokenizer(prompt, truncation=False).input_ids) > self.tokenizer.model_max_length

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        k = self.settings.images_per_caption
        # CPU generators give the same starting noise on any device; one per image, in the pipeline's
        # order (prompt-major), so an image never depends on its batch neighbours.
        generators = [torch.Generator("cpu").manual_seed(seed) for row in seeds for seed in row]
        size = self.settings.resolution
        images = self.pipe(
            prompts,
            height=size,
            width=size,
            num_inference_steps=self.settings.num_inference_steps,
            guidance_scale=self.settings.guidance_scale,
            negative_prompt=[self.settings.negative_prompt] * len(prompts) if self.settings.negative_prompt else None,
            num_images_per_prompt=k,  # text embeddings are computed once per prompt, then repeated
            generator=generators,
        ).images
        return [images[i * k : (i + 1) * k] for i in range(len(prompts))]


class ProceduralBackend:
    """Weights-free renderer of what a caption names (see `data_gen.procedural`); not Stable Diffusion."""

    def __init__(self, settings: GenerationSettings, device: str):
        self.settings = settings

    def is_truncated(self, prompt: str) -> bool:
        return False

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        from .procedural import render

        return [[render(prompt, seed, self.settings.resolution) for seed in row] for prompt, row in zip(prompts, seeds)]


def load_backend(settings: GenerationSettings, device: str):
    cls = ProceduralBackend if settings.backend == "procedural" else DiffusionBackend
    return cls(settings, device)
