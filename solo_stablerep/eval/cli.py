"""``solo-stablerep-eval`` / ``python -m solo_stablerep.eval``: options, output, exit status.

    solo-stablerep-eval CKPT [CKPT ...] --datasets DS [DS ...] --output DIR [options]
    solo-stablerep-eval export CKPT OUT.safetensors

Bad input (a checkpoint, a data set, an option) ends with one line on stderr and exit status 2.
Under ``torchrun --nproc_per_node N -m solo_stablerep.eval ...`` the ranks extract the features
together and rank 0 runs the probes and writes the outputs (:mod:`.distributed`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from solo_stablerep.console import (
    ArgumentParser,
    check_output_file,
    check_output_folder,
    configure_logging,
    int_at_least,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
    seed_int,
)

PROG = "solo-stablerep-eval"
log = logging.getLogger("solo_stablerep.eval")


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Compare solo-learn checkpoints side by side by the papers' protocols: linear "
        "transfer (45-value weight-decay sweep, L-BFGS logistic regression), weighted kNN and "
        "few-shot episodes on frozen features. `solo-stablerep-eval export CKPT OUT.safetensors` "
        "writes a checkpoint's backbone for timm/torchvision.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="CKPT",
        help="solo-learn checkpoints (args.json beside each) or random:<backbone>",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        metavar="DS",
        help="digits, imagefolder:PATH, or NAME:ROOT with NAME one of aircraft, "
        "caltech101, cars, cifar10, cifar100, dtd, flowers102, food101, pets, sun397, voc2007",
    )
    p.add_argument(
        "--output", type=Path, required=True, help="folder for results.json/.csv/.md/.png"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier run in --output"
    )
    p.add_argument(
        "--probes",
        nargs="+",
        default=["linear", "knn", "fewshot"],
        choices=["linear", "knn", "fewshot"],
        help="(default: all three)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache (default: ~/.cache/solo-stablerep/features)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="resize + centre-crop size (default: each checkpoint's pretraining crop "
        "size; 224 for random:)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=128, help="images per extraction batch"
    )
    p.add_argument(
        "--workers", type=non_negative_int, default=4, help="data loader workers for decoding"
    )
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument(
        "--weight-decays",
        type=positive_int,
        default=45,
        metavar="N",
        help="number of log-spaced weight decays in [1e-6, 1e5] (the protocol's: 45)",
    )
    p.add_argument("--knn-k", type=positive_int, default=20)
    p.add_argument("--knn-temperature", type=positive_float, default=0.07)
    p.add_argument("--ways", type=int_at_least(2), default=5)
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5])
    p.add_argument(
        "--episodes", type=int_at_least(2), default=600, help="(2 at least: a 95 %% interval)"
    )
    p.add_argument(
        "--queries", type=positive_int, default=15, help="query items per class and episode"
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="of the held-out validation split and the episodes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _export_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=f"{PROG} export",
        description="Write a checkpoint's backbone weights as safetensors "
        "that timm (or torchvision, for ResNets) loads.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("output", type=Path, metavar="OUT.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def _configure_output() -> None:
    configure_logging("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*(Overwriting|custom backbone).*")


def _compare(args) -> int:
    import numpy as np

    from solo_stablerep.eval.cache import FeatureCache
    from solo_stablerep.eval.compare import ProbeSettings, compare
    from solo_stablerep.eval.distributed import join, leave
    from solo_stablerep.eval.features import ExtractionSettings
    from solo_stablerep.eval.report import check_report_folder, markdown_table, write_report
    from solo_stablerep.storage import cache_dir

    # where the results go, before any work: an unusable --output would lose all of it
    check_report_folder(args.output, args.overwrite)
    cache_root = args.cache_dir or cache_dir() / "features"
    check_output_folder(cache_root, "--cache-dir")
    settings = ProbeSettings(
        probes=args.probes,
        weight_decays=tuple(np.logspace(-6, 5, args.weight_decays)),
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        ways=args.ways,
        shots=args.shots,
        episodes=args.episodes,
        queries=args.queries,
        seed=args.seed,
        image_size=args.image_size,
        device=args.device,
    )
    ranks = join(args.device)  # alone, or one rank of torchrun's processes
    extraction = ExtractionSettings(
        args.batch_size, args.workers, args.device, not args.no_progress, ranks
    )
    cache = FeatureCache(cache_root)
    completed = False
    try:
        comparison = compare(args.models, args.datasets, cache, settings, extraction)
        completed = True
    finally:
        leave(completed)
    if not ranks.is_main:
        return 0  # its share of the features is in the cache; rank 0 reports
    log.info(
        "features: %d split(s) read from the cache, %d extracted (%s)",
        cache.hits,
        cache.misses,
        cache.root,
    )
    labels = [m.label for m in comparison.models]
    summary = {
        "protocol": settings.summary(),
        "models": [
            {
                "label": m.label,
                "spec": m.spec,
                "backbone": m.backbone_name,
                "method": m.method,
                "checkpoint": str(m.checkpoint) if m.checkpoint else None,
            }
            for m in comparison.models
        ],
        "datasets": [
            {
                "spec": d.spec,
                "name": d.name,
                "metric": d.metric,
                "sizes": {name: len(split) for name, split in d.splits.items()},
            }
            for d in comparison.datasets
        ],
        "cache": {"dir": str(cache.root), "hits": cache.hits, "misses": cache.misses},
        "skipped": comparison.skipped,
    }
    written = write_report(args.output, summary, labels, comparison.results)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    print(
        markdown_table(labels, comparison.results, comparison.skipped), end="", flush=True
    )  # the result, on stdout
    return 0


def _export(args) -> int:
    from solo_stablerep.eval.backbone import read_spec
    from solo_stablerep.eval.export import export_backbone

    check_output_file(args.output, "OUT", args.overwrite)
    spec = read_spec(args.checkpoint)
    timm_name = export_backbone(spec, args.output)
    kwargs = "".join(f", {k}={v!r}" for k, v in spec.backbone_kwargs.items())
    print(
        f"wrote {args.output}: load it with timm.create_model({timm_name!r}, pretrained=True, "
        f"num_classes=0, pretrained_cfg_overlay={{'file': {str(args.output)!r}}}{kwargs})"
    )
    return 0


def _main(argv: list) -> int:
    exporting = bool(argv) and argv[0] == "export"
    args = _export_parser().parse_args(argv[1:]) if exporting else _parser().parse_args(argv)
    _configure_output()
    return _export(args) if exporting else _compare(args)


def main(argv=None) -> int:
    # options, checkpoints, data sets, cache, outputs: one line
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else list(argv)))
