"""Images/s of data_gen on a GPU, full-size SD 1.5 architecture (random weights, no download).

The UNet, VAE and CLIP text encoder are built from SD 1.5's published config values (written
inline below), saved with `save_pretrained`, and loaded back through data_gen's own
`from_pretrained` path, so the measured work is exactly a real run's: 512 px, fp16, DDIM, guidance
2.0, SDPA attention, images resized to 256 px and written as JPEG. Prints images/s for each batch
size (captions per call x k images).

    python bench/gpu_generate_sd15.py [--batch-sizes 1 2 4 8] [--steps 50] [--images-per-caption 10]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from fixtures.tiny_pipeline import write_tiny_tokenizer
from tqdm import tqdm

from data_gen.backends import DiffusionBackend
from data_gen.captions import Caption, caption_id
from data_gen.runner import FileSink, run_batches
from data_gen.settings import GenerationSettings

UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
VAE = dict(  # vae/config.json
    sample_size=512,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT = dict(  # text_encoder/config.json (CLIP ViT-L/14 text tower)
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
SCHEDULER = dict(  # scheduler/scheduler_config.json
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def build_sd15_random(folder: Path) -> Path:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # The real 49k-token BPE vocabulary cannot be downloaded here; a byte-level one with a
    # 49408-entry embedding table keeps the text encoder's size and cost (it runs once per caption
    # anyway).
    write_tiny_tokenizer(folder / "_tokenizer_src")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "_tokenizer_src/vocab.json"),
        merges=str(folder / "_tokenizer_src/merges.txt"),
        model_max_length=77,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TEXT,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE),
        text_encoder=text,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET),
        scheduler=DDIMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="captions per call"
    )
    p.add_argument("--images-per-caption", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--calls",
        type=int,
        default=3,
        help="timed pipeline calls per batch size (after one warm-up)",
    )
    p.add_argument(
        "--work",
        default=None,
        help="folder for the random model and images (default: a temp folder)",
    )
    args = p.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    work = Path(args.work or tempfile.mkdtemp(prefix="sd15_bench_"))
    model = work / "sd15-random"
    if not (model / "model_index.json").exists():
        build_sd15_random(model)
    settings = (
        GenerationSettings(
            model=str(model),
            num_inference_steps=args.steps,
            images_per_caption=args.images_per_caption,
        )
        .validate()
        .resolved("cuda")
    )
    backend = DiffusionBackend(settings, "cuda")
    k = settings.images_per_caption
    results = {}
    for batch_size in args.batch_sizes:
        texts = [
            f"a photo of object {i} in batch {batch_size}"
            for i in range(batch_size * (args.calls + 1))
        ]
        captions = [Caption(i, caption_id(t), t, None) for i, t in enumerate(texts)]
        out = work / f"out_b{batch_size}"
        sink = FileSink(out, "bench", len(captions), settings)
        try:
            run_batches(
                backend, captions[:batch_size], settings, batch_size, sink, tqdm(disable=True)
            )  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            run_batches(
                backend, captions[batch_size:], settings, batch_size, sink, tqdm(disable=True)
            )
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            print(f"batch {batch_size}: out of memory")
            break
        finally:
            sink.close()
        results[batch_size] = batch_size * k * args.calls / seconds
        print(
            f"batch {batch_size} captions x {k} images: {results[batch_size]:.2f} img/s "
            f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)",
            flush=True,
        )
    print(
        json.dumps(
            {"device": torch.cuda.get_device_name(), "steps": args.steps, "images_per_s": results}
        )
    )


if __name__ == "__main__":
    main()
