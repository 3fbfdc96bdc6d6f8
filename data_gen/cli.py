"""`stablerep-generate CAPTIONS OUT [options]`, `stablerep-generate merge OUT` and
`stablerep-generate convert SRC OUT` (a manifest or authors' data set into WebDataset shards)."""

from __future__ import annotations

import json
import sys

from solo_stablerep.console import (
    ArgumentParser,
    configure_logging,
    float_option,
    int_option,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)

from .output import check_writable
from .settings import (
    BACKENDS,
    DEFAULT_MODEL,
    DTYPES,
    IMAGE_FORMATS,
    NUMBERS,
    SCHEDULERS,
    GenerationSettings,
)
from .shards import DEFAULT_SHARD_BYTES, shard_bytes


def _generate_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="stablerep-generate",
        description="Generate a StableRep synthetic data set (many images per caption). "
        "`stablerep-generate merge OUT` writes the manifest from the finished parts.",
    )
    p.add_argument(
        "captions", help="text file (one caption a line) or .csv/.tsv with a caption column"
    )
    p.add_argument("out", help="output folder (data set root)")
    g = p.add_argument_group("what to generate (stored in OUT; a rerun must match)")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="diffusion",
        help="diffusion (Stable Diffusion) or procedural (weights-free toy renderer, CPU demo)",
    )
    g.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id or local folder for from_pretrained"
    )
    g.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    g.add_argument("--guidance-scale", type=float_option(NUMBERS["guidance_scale"]), default=2.0)
    g.add_argument(
        "--steps",
        type=int_option(NUMBERS["num_inference_steps"]),
        default=50,
        dest="num_inference_steps",
    )
    g.add_argument(
        "--images-per-caption", type=int_option(NUMBERS["images_per_caption"]), default=10
    )
    g.add_argument(
        "--resolution",
        type=int_option(NUMBERS["resolution"]),
        default=512,
        help="generated size (px, a multiple of 8)",
    )
    g.add_argument(
        "--image-size", type=int_option(NUMBERS["image_size"]), default=256, help="saved size (px)"
    )
    g.add_argument("--image-format", choices=tuple(IMAGE_FORMATS), default="jpg")
    g.add_argument(
        "--quality", type=int_option(NUMBERS["quality"]), default=95, help="JPEG/WebP quality"
    )
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: fp16 on GPU, fp32 on CPU")
    g.add_argument("--seed", type=int_option(NUMBERS["seed"]), default=0)
    g.add_argument("--negative-prompt", default=None)
    r = p.add_argument_group("how to run (does not change the images)")
    r.add_argument(
        "--format",
        choices=("manifest", "webdataset"),
        default="manifest",
        help="manifest: one file per image + manifest.jsonl; webdataset: tar shards, one sample "
        "per caption (no merge step)",
    )
    r.add_argument(
        "--shard-size",
        type=positive_float,
        default=DEFAULT_SHARD_BYTES / 1e9,
        help="webdataset: GB per tar (default ~1)",
    )
    r.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="captions per pipeline call (x images-per-caption images)",
    )
    r.add_argument(
        "--num-parts",
        type=positive_int,
        default=None,
        help="processes the run is split into (default: WORLD_SIZE or SLURM_NTASKS, else 1)",
    )
    r.add_argument(
        "--part-index",
        type=non_negative_int,
        default=None,
        help="this process's part (default: RANK or SLURM_PROCID, else 0)",
    )
    r.add_argument(
        "--device", default=None, help="default: cuda:LOCAL_RANK if a GPU is present, else cpu"
    )
    r.add_argument(
        "--overwrite", action="store_true", help="replace a run with other settings found in OUT"
    )
    r.add_argument(
        "--skip-bad-lines", action="store_true", help="skip (and count) non-UTF-8 caption lines"
    )
    r.add_argument(
        "--caption-column",
        default="caption",
        help="CSV/TSV caption column: a name from the header row, or a number from 1 for a file "
        "without one (cc3m/cc12m's url<TAB>caption: --caption-column 2)",
    )
    r.add_argument(
        "--label-column",
        default=None,
        help="CSV/TSV label column, a name or (no header row) a number (default: 'label' if "
        "present)",
    )
    r.add_argument(
        "--contact-sheet-captions",
        type=non_negative_int,
        default=6,
        help="captions shown in the contact sheet of each part (0: none)",
    )
    r.add_argument(
        "--no-merge", action="store_true", help="do not write the manifest when the last part ends"
    )
    r.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    return run_command("stablerep-generate", lambda: _run(argv))


def _run(argv: list[str]) -> None:
    if argv[:1] == ["merge"]:
        p = ArgumentParser(
            prog="stablerep-generate merge",
            description="Write OUT/manifest.jsonl from every part's finished captions.",
        )
        p.add_argument("out")
        from .output import merge

        print(f"wrote {merge(p.parse_args(argv[1:]).out)}")
        return
    if argv[:1] == ["convert"]:  # manifest / authors' CSV -> WebDataset shards
        from .convert import main as convert_main

        convert_main(argv[1:])
        return
    args = _generate_parser().parse_args(argv)
    settings = GenerationSettings(
        **{name: getattr(args, name) for name in GenerationSettings.__dataclass_fields__}
    ).validate()  # before any model loads
    check_writable(args.out)
    from .runner import RunOptions, generate

    summary = generate(
        args.captions,
        args.out,
        settings,
        RunOptions(
            batch_size=args.batch_size,
            format=args.format,
            shard_bytes=shard_bytes(args.shard_size),
            num_parts=args.num_parts,
            part_index=args.part_index,
            device=args.device,
            overwrite=args.overwrite,
            skip_bad_lines=args.skip_bad_lines,
            caption_column=args.caption_column,
            label_column=args.label_column,
            contact_sheet_captions=args.contact_sheet_captions,
            merge=not args.no_merge,
            progress=not args.no_progress,
        ),
    )
    print(json.dumps(summary, indent=2))
