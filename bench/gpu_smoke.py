"""GPU smoke test: every code path that only a GPU runs, on tiny inputs, in a few minutes.

Each check runs in its own process with a time limit and prints one ``PASS``/``FAIL`` line with its
figures; a crash or a hang in one check does not stop the others.

1. ``data``: a tiny labelled data set from the procedural backend (stablerep-generate, CPU), and
   the same converted into tar shards
2. ``dali_mixed``: one epoch of the synthetic DALI loader with ``dali.device=gpu`` (decoder
   ``mixed``), from the manifest layout and from the same data as WebDataset shards: views on the
   GPU, their shapes, images/s
3. ``train_16mixed``: StableRep through the entry point, ``precision=16-mixed`` (GradScaler),
   DALI gpu
4. ``train_bf16``: StableRep through the entry point, ``precision=bf16-mixed``, PyTorch DataLoader
5. ``train_pp_bf16``: StableRep++ (CLIP-size text tower) through the entry point, bf16-mixed,
   DALI gpu
6. ``paper_ddp``: scripts/pretrain/synthetic-paper/stablerep.yaml with only its size shrunk (tiny
   ViT, 64 px, 8 captions per GPU): DDP over NCCL on every visible GPU (up to 2), sync BN, fp16
   autocast with a GradScaler, DALI ``mixed``, as the cluster runs it. With one GPU, NCCL and
   SyncBatchNorm run at world size 1 (PyTorch's SyncBatchNorm then keeps local statistics): the
   cross-GPU reduction needs 2 GPUs
7. ``generate_fp16``: stablerep-generate with a tiny random SD pipeline, ``--dtype fp16`` on cuda
8. ``sd15_bench``: bench/gpu_generate_sd15.py (full-size SD-1.5 architecture, random weights,
   512 px, fp16), shortened

``--list`` prints each check with the GPU-only paths it covers; the CPU rehearsal of every shipped
config (tests/test_config_rehearsal.py) covers the rest, and docs/pretraining.md lists what it
cannot.

    python bench/gpu_smoke.py            # on one GPU; about 3-5 minutes expected (< 8 on one H200)
    python bench/gpu_smoke.py --cpu      # the same flow with CPU stand-ins (DALI cpu, fp32/bf16
                                         # on the CPU, gloo, no sync BN, fp32 generation): checks
                                         # the script itself
    python bench/gpu_smoke.py --list     # the checks and what each covers

Ends with ``RATIO gpu_smoke_pass_fraction`` for bench/run_all.py; exit status 1 if a check failed.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_CONFIGS = REPO / "scripts" / "pretrain" / "synthetic"
PAPER_CONFIGS = REPO / "scripts" / "pretrain" / "synthetic-paper"
CAPTIONS_PER_DIGIT = 8  # 80 captions: 10 steps of 8 captions per epoch
IMAGES_PER_CAPTION = 6
N_IMG = 4  # images of a caption per item
CHECKS = (
    "data",
    "dali_mixed",
    "train_16mixed",
    "train_bf16",
    "train_pp_bf16",
    "paper_ddp",
    "generate_fp16",
    "sd15_bench",
)
# The paths of each check that only a GPU takes: what the CPU rehearsal of the shipped configs
# (tests/test_config_rehearsal.py; docs/pretraining.md) cannot cover, and the rest.
COVERS = {
    "data": (),
    "dali_mixed": ("DALI mixed",),
    "train_16mixed": ("fp16 autocast", "fp16 GradScaler", "DALI mixed"),
    "train_bf16": ("bf16 autocast on CUDA",),
    "train_pp_bf16": ("bf16 autocast on CUDA", "DALI mixed"),
    "paper_ddp": ("NCCL", "sync BN", "fp16 autocast", "fp16 GradScaler", "DALI mixed"),
    "generate_fp16": ("fp16 diffusion",),
    "sd15_bench": ("fp16 diffusion",),
}
TIME_LIMIT_S = {
    "data": 120,
    "dali_mixed": 120,
    "train_16mixed": 240,
    "train_bf16": 240,
    "train_pp_bf16": 240,
    "paper_ddp": 240,
    "generate_fp16": 180,
    "sd15_bench": 360,
}


def figure(name, value):
    """A child's result line, collected by the parent."""
    print(f"FIGURE {name} {value}", flush=True)


# ---------------------------------------------------------------------------------------- children


def child_data(work: Path, cpu: bool):
    from solo_stablerep.data.manifest import read_manifest
    from solo_stablerep.demo.captions import write_captions

    count = write_captions(work / "captions.csv", captions_per_class=CAPTIONS_PER_DIGIT, seed=0)
    command = [
        sys.executable,
        "-m",
        "data_gen",
        str(work / "captions.csv"),
        str(work / "data"),
        "--backend",
        "procedural",
        "--images-per-caption",
        str(IMAGES_PER_CAPTION),
        "--image-size",
        "64",
        "--no-progress",
    ]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    header, captions = read_manifest(work / "data")
    assert len(captions) == count and all(len(c.images) == IMAGES_PER_CAPTION for c in captions)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_gen",
            "convert",
            str(work / "data"),
            str(work / "shards"),
            "--shard-size",
            "0.0002",
        ],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    figure("captions", count)
    figure("images", count * IMAGES_PER_CAPTION)


def train_overrides(work: Path, cpu: bool, data_format: str, precision: str) -> list:
    if cpu and precision == "16-mixed":
        precision = "32"  # Lightning has no fp16 autocast on the CPU
    return [
        f"data.train_path={work / 'data'}",
        f"data.format={data_format}",
        f"dali.device={'cpu' if cpu else 'gpu'}",
        f"data.synthetic.n_img={N_IMG}",
        "data.num_workers=2",
        "backbone.name=vit_tiny",
        "+backbone.kwargs.img_size=64",
        "augmentations.0.crop_size=64",
        "method_kwargs.proj_hidden_dim=256",
        "method_kwargs.proj_output_dim=64",
        "optimizer.batch_size=8",
        f"accelerator={'cpu' if cpu else 'gpu'}",
        "devices=1",
        "strategy=auto",
        "sync_batchnorm=False",
        f"precision={precision}",
        "max_epochs=1",
        "checkpoint.enabled=False",
        "auto_resume.enabled=False",
        "wandb.enabled=False",
        "+enable_progress_bar=False",
    ]


def compose(config_name: str, overrides: list, config_dir: Path = SYNTHETIC_CONFIGS):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def child_dali_mixed(work: Path, cpu: bool):
    for layout, path in (("manifest", work / "data"), ("webdataset", work / "shards")):
        overrides = [
            *train_overrides(work, cpu, "dali", "32"),
            f"data.train_path={path}",
            f"data.synthetic.layout={layout}",
        ]
        dali_epoch(overrides, cpu, layout)


def dali_epoch(overrides: list, cpu: bool, layout: str):
    import torch

    from solo_stablerep.data.loaders import prepare_synthetic_train_data
    from solo_stablerep.pretrain import parse_pretrain_cfg

    loader = prepare_synthetic_train_data(
        parse_pretrain_cfg(compose("stablerep.yaml", overrides))
    ).build_loader()
    device = "cpu" if cpu else "cuda"
    start, images, batches = time.perf_counter(), 0, 0
    for indexes, views, targets in loader:
        assert len(views) == N_IMG, f"{len(views)} views, expected {N_IMG}"
        for view in views:
            assert view.shape == (8, 3, 64, 64) and view.dtype == torch.float32, (
                view.shape,
                view.dtype,
            )
            assert view.device.type == device, f"views on {view.device}, expected {device}"
            assert torch.isfinite(view).all()
        # all views of a row come from one caption's images: same index and target for the row
        assert indexes.shape == targets.shape == (8,)
        images += N_IMG * len(indexes)
        batches += 1
    seconds = time.perf_counter() - start
    assert batches == len(loader) == CAPTIONS_PER_DIGIT * 10 // 8
    figure(f"{layout}_decoder", "cpu" if cpu else "mixed")
    figure(f"{layout}_batches", batches)
    figure(f"{layout}_images_per_s", f"{images / seconds:.0f}")


def child_train(
    work: Path, cpu: bool, config_name: str, data_format: str, precision: str, extra=()
):
    import torch

    from solo_stablerep.pretrain import run_pretrain

    os.chdir(work)  # Lightning's logs
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    cfg = compose(config_name, train_overrides(work, cpu, data_format, precision) + list(extra))
    start = time.perf_counter()
    trainer = run_pretrain(cfg)
    report_training(trainer, cpu, time.perf_counter() - start, CAPTIONS_PER_DIGIT * 10 // 8)


def report_training(trainer, cpu: bool, seconds: float, expected_steps: int):
    """Checks a finished run (steps, finite losses and weights, a GradScaler under 16-mixed) and
    prints its figures."""
    import torch

    steps = trainer.global_step
    assert steps == expected_steps, f"{steps} optimiser steps, expected {expected_steps}"
    losses = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.endswith("loss") and k != "train_class_loss"
    }  # the method's own losses
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    if trainer.precision == "16-mixed" and not cpu:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        assert scaler is not None, "16-mixed ran without a GradScaler"
        figure("grad_scale", f"{scaler.get_scale():g}")
    params = [p for p in trainer.lightning_module.parameters()]
    assert all(torch.isfinite(p).all() for p in params), "non-finite weights after training"
    figure("precision", trainer.precision)
    figure("steps", steps)
    figure("steps_per_s", f"{steps / seconds:.2f}")
    for name, value in sorted(losses.items()):
        figure(name, f"{value:.4f}")
    if not cpu:
        figure("peak_gpu_gib", f"{torch.cuda.max_memory_allocated() / 2**30:.2f}")


def child_paper_ddp(work: Path, cpu: bool):
    """The paper config as a cluster runs it (DDP, sync BN, its precision, DALI on the GPU), with
    only its size shrunk. With 2 GPUs Lightning starts rank 1 by running this child again."""
    import torch
    import torch.distributed as dist
    from lightning.pytorch import Callback

    from solo_stablerep.pretrain import run_pretrain

    class Distributed(Callback):
        def on_train_start(self, trainer, pl_module):
            self.backend = dist.get_backend()
            self.sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules())

    os.chdir(work)
    gpus = 1 if cpu else min(2, torch.cuda.device_count())
    steps = 4  # of 80 captions / (8 x 2 GPUs) per epoch
    size = [
        f"data.train_path={work / 'data'}",
        "data.num_workers=2",
        "backbone.name=vit_tiny",
        "+backbone.kwargs.img_size=64",
        "augmentations.0.crop_size=64",
        "optimizer.batch_size=8",
        f"devices={gpus}",
        "num_nodes=1",
        f"+max_steps={steps}",
        "checkpoint.enabled=False",
        "auto_resume.enabled=False",
        "+enable_progress_bar=False",
    ]
    # gloo, no sync BN (GPU only), fp32 for fp16 (no fp16 autocast on the CPU), DALI cpu
    cpu_stand_ins = [
        "accelerator=cpu",
        "sync_batchnorm=False",
        "precision=32",
        "dali.device=cpu",
    ]
    cfg = compose("stablerep.yaml", size + (cpu_stand_ins if cpu else []), PAPER_CONFIGS)
    assert cpu or (cfg.sync_batchnorm, cfg.precision) == (True, "16-mixed"), "config changed"
    seen = Distributed()
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = run_pretrain(cfg, callbacks=[seen])
    if trainer.global_rank != 0:
        return
    if not cpu:
        assert seen.backend == "nccl", f"DDP ran over {seen.backend}, not NCCL"
        assert seen.sync_bn > 0, "sync_batchnorm: True left no SyncBatchNorm layer"
    figure("backend", seen.backend)
    figure("world_size", trainer.world_size)
    figure("sync_bn_layers", seen.sync_bn)
    figure("cross_gpu_sync_bn", "yes" if trainer.world_size > 1 and seen.sync_bn else "no")
    report_training(trainer, cpu, time.perf_counter() - start, steps)


def child_generate_fp16(work: Path, cpu: bool):
    import numpy as np
    from fixtures.tiny_pipeline import build_tiny_pipeline
    from PIL import Image

    from solo_stablerep.data.manifest import read_manifest

    model = build_tiny_pipeline(work / "tiny_sd")
    (work / "gen_captions.txt").write_text(
        "".join(f"a photo of thing number {i}\n" for i in range(8))
    )
    dtype, device = ("fp32", "cpu") if cpu else ("fp16", "cuda")
    out = work / "generated"
    command = [
        sys.executable,
        "-m",
        "data_gen",
        str(work / "gen_captions.txt"),
        str(out),
        "--model",
        str(model),
        "--dtype",
        dtype,
        "--device",
        device,
        "--resolution",
        "32",
        "--image-size",
        "16",
        "--steps",
        "4",
        "--images-per-caption",
        "2",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    header, captions = read_manifest(out)
    assert len(captions) == 8 and header["generator"]["dtype"] == dtype, header["generator"]
    pixels = np.stack([np.asarray(Image.open(out / c.images[0])) for c in captions]).astype(
        np.float32
    )
    # fp16 overflow shows as NaN latents, decoded to one flat colour; random weights give noise
    assert pixels.std() > 1.0, (
        f"images are flat (std {pixels.std():.2f}): NaN in the {dtype} pipeline?"
    )
    figure("dtype", dtype)
    figure("images", 16)
    figure("seconds_with_load", f"{seconds:.1f}")


def child_sd15_bench(work: Path, cpu: bool):
    if cpu:
        figure("skipped", "needs_cuda")
        return
    command = [
        sys.executable,
        str(REPO / "bench" / "gpu_generate_sd15.py"),
        "--batch-sizes",
        "1",
        "4",
        "--steps",
        "10",
        "--images-per-caption",
        "2",
        "--calls",
        "1",
        "--work",
        str(work / "sd15"),
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
    assert proc.returncode == 0, f"gpu_generate_sd15.py exited {proc.returncode}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["images_per_s"]) == {"1", "4"}, result
    for batch, rate in result["images_per_s"].items():
        figure(f"images_per_s_b{batch}", f"{rate:.2f}")


def run_child(name: str, work: Path, cpu: bool):
    if name == "data":
        child_data(work, cpu)
    elif name == "dali_mixed":
        child_dali_mixed(work, cpu)
    elif name == "train_16mixed":
        child_train(work, cpu, "stablerep.yaml", "dali", "16-mixed")
    elif name == "train_bf16":
        child_train(work, cpu, "stablerep.yaml", "image_folder", "bf16-mixed")
    elif name == "train_pp_bf16":
        # the paper's text tower on a GPU; a small one keeps the CPU stand-in quick
        small_text = (
            [
                "method_kwargs.text_width=64",
                "method_kwargs.text_layers=2",
                "method_kwargs.text_heads=2",
                "method_kwargs.embed_dim=32",
            ]
            if cpu
            else []
        )
        child_train(work, cpu, "stablerep_pp.yaml", "dali", "bf16-mixed", small_text)
    elif name == "paper_ddp":
        child_paper_ddp(work, cpu)
    elif name == "generate_fp16":
        child_generate_fp16(work, cpu)
    elif name == "sd15_bench":
        child_sd15_bench(work, cpu)
    else:
        raise SystemExit(f"gpu_smoke: error: unknown check {name!r}")


# ------------------------------------------------------------------------------------------ parent


def run_check(name: str, work: Path, cpu: bool, time_limit: float):
    """(passed, figures, seconds, detail) of one check run in its own process."""
    command = [sys.executable, __file__, "--child", name, "--work", str(work)] + (
        ["--cpu"] if cpu else []
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=time_limit
        )
    except subprocess.TimeoutExpired:
        return False, {}, time.perf_counter() - start, f"timed out after {time_limit:.0f} s"
    seconds = time.perf_counter() - start
    figures = dict(
        line.split()[1:3]
        for line in proc.stdout.splitlines()
        if line.startswith("FIGURE ") and len(line.split()) >= 3
    )
    detail = ""
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        detail = tail[-1] if tail else f"exit status {proc.returncode}"
        log = work / f"{name}.log"
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        detail += f" (full output: {log})"
    return proc.returncode == 0, figures, seconds, detail


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu", action="store_true", help="CPU stand-ins for every GPU path (checks the script)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=CHECKS,
        help="run only these checks (data is added when needed)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=470,
        help="seconds for all checks; later ones are not started",
    )
    p.add_argument(
        "--work", type=Path, default=None, help="work folder (default: a new temporary folder)"
    )
    p.add_argument("--list", action="store_true", help="print the checks and what each covers")
    p.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.list:
        for name in CHECKS:
            print(f"{name}: {', '.join(COVERS[name]) or '-'}")
        return 0

    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_smoke_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.child:
        run_child(args.child, work, args.cpu)
        return 0

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(
            "gpu_smoke: error: no CUDA device visible; use --cpu to check the script on the CPU",
            file=sys.stderr,
        )
        return 2
    device = "cpu (stand-ins)" if args.cpu else torch.cuda.get_device_name()
    print(f"gpu_smoke on {device}, torch {torch.__version__}, work folder {work}", flush=True)
    checks = list(CHECKS if not args.only else dict.fromkeys(["data", *args.only]))
    deadline = time.perf_counter() + args.budget
    passed = 0
    for name in checks:
        left = deadline - time.perf_counter()
        if left < 20:
            print(f"FAIL {name}: not started, the {args.budget:.0f} s budget is spent", flush=True)
            continue
        ok, figures, seconds, detail = run_check(
            name, work, args.cpu, min(TIME_LIMIT_S[name], left)
        )
        shown = " ".join(f"{k}={v}" for k, v in figures.items())
        print(
            f"{'PASS' if ok else 'FAIL'} {name} ({seconds:.0f} s) {shown}"
            f"{'  ' + detail if detail else ''}",
            flush=True,
        )
        passed += ok
        if name == "data" and not ok:
            print(
                "gpu_smoke: the data set could not be made; the training checks will fail too",
                flush=True,
            )
    print(f"RATIO gpu_smoke_pass_fraction {passed / len(checks):.2f} (goal == 1)")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
