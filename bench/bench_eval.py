"""The evaluation's two costs, each side by side with its baseline in one run (CPU, or the GPU when
there is one):

1. Feature extraction into the cache (:func:`solo_stablerep.eval.features.extract_batches` filling
   a cache entry: the width probed on one image, rows written in place, fsync, JSON) against a
   bare ``torch.no_grad()`` loop of the same backbone over the same decoded batches. Goal:
   throughput >= 0.95 x the bare loop.
2. The linear probe's 45-value weight-decay sweep (+ the refit on train+val), our full-batch
   L-BFGS in PyTorch against scikit-learn's ``LogisticRegression(solver="lbfgs")`` sweep with warm
   starts (the authors' CPU path), on the same synthetic features: Gaussian classes, N x D train,
   a quarter of that for val and for test. Goals: time <= 0.5 x scikit-learn's, the chosen weight
   decay within one grid step, test accuracy within 0.5 points.
3. Memory: the peak anonymous memory the probes add on a memory-mapped train split bigger than
   the solver's chunk of rows, with no val split (the held-out 20 % read in place), over the size
   of the features. Goal: < 1 (the features are never held twice).

The protocol's size is ``--n 20000 --dim 768 --classes 100`` (tens of minutes for scikit-learn on
two cores); the default is smaller so that ``bench/run_all.py`` stays quick.

    python bench/bench_eval.py [--n 5000] [--dim 256] [--classes 50] [--images 512] [--rounds 3]
                               [--threads N] [--memory-rows 400000] [--skip PART ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from solo_stablerep.eval.cache import FeatureCache
from solo_stablerep.eval.features import extract_batches, feature_dim
from solo_stablerep.eval.probes import DEFAULT_WEIGHT_DECAYS, linear_probe


def bare_loop(backbone, batches, device) -> list:
    outputs = []
    with torch.no_grad():
        for images in batches:
            outputs.append(backbone(images.to(device)).float().cpu().numpy())
    return outputs


def cached_extraction(backbone, batches, device, cache: FeatureCache, key: str) -> None:
    """What :func:`split_features` does on a cache miss, minus the data loader."""
    num_items = sum(len(b) for b in batches)
    rows = cache.create(key, num_items, feature_dim(backbone, batches[0][0], device))
    position = 0

    def write(features):
        nonlocal position
        rows[position : position + len(features)] = features
        position += len(features)

    extract_batches(backbone, batches, device, write)
    rows.flush()
    cache.commit(key, {"bench": key}, np.zeros(num_items, dtype=np.int64))


def bench_extraction(args, device) -> float:
    import torchvision

    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    backbone = backbone.eval().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=g)
    batches = list(images.split(args.batch_size))
    bare_loop(backbone, batches[:1], device)  # warm-up
    bare_times, ours_times = [], []
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(Path(folder))
        for r in range(args.rounds):  # alternating rounds on the same batches
            start = time.perf_counter()
            bare_loop(backbone, batches, device)
            bare_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            cached_extraction(backbone, batches, device, cache, f"round{r}")
            ours_times.append(time.perf_counter() - start)
        features, _ = cache.load("round0")
        np.testing.assert_allclose(
            features, np.concatenate(bare_loop(backbone, batches, device)), rtol=1e-4, atol=1e-4
        )
    bare, ours = statistics.median(bare_times), statistics.median(ours_times)
    print(
        f"extraction of {args.images} images {args.image_size}px (resnet18, {device}): bare loop "
        f"{args.images / bare:.1f} img/s, into the cache {args.images / ours:.1f} img/s"
    )
    return bare / ours


def gaussian_splits(n, dim, classes):
    """Train (n), val and test (n / 4 each) of Gaussian classes sharing their centres; the noise
    puts a linear probe between chance and perfect (~70 % at the defaults)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    splits = []
    for size in (n, n // 4, n // 4):
        labels = rng.integers(0, classes, size)
        noise = rng.normal(scale=np.sqrt(dim) / 4, size=(size, dim)).astype(np.float32)
        splits.append(((centres[labels] + noise) * 2 + 0.5, labels))
    return splits


def sklearn_sweep(train, val, test, weight_decays):
    """The authors' CPU protocol: z-score, ascending sweep with warm starts, strict '>', refit."""
    from sklearn.linear_model import LogisticRegression

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    mean, std = train_x.mean(0), train_x.std(0)
    model = LogisticRegression(max_iter=1000, warm_start=True)
    best_score, best_wd = -1.0, None
    for weight_decay in weight_decays:
        model.set_params(C=1 / weight_decay)
        model.fit((train_x - mean) / std, train_y)
        score = model.score((val_x - mean) / std, val_y)
        if score > best_score:
            best_score, best_wd = score, weight_decay
    trainval_x, trainval_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    mean, std = trainval_x.mean(0), trainval_x.std(0)
    model = LogisticRegression(max_iter=1000, C=1 / best_wd).fit(
        (trainval_x - mean) / std, trainval_y
    )
    return best_wd, model.score((test_x - mean) / std, test_y)


def bench_sweep(args, device):
    train, val, test = gaussian_splits(args.n, args.dim, args.classes)
    linear_probe(
        train[0][:200], train[1][:200], test[0][:50], test[1][:50], weight_decays=[1.0]
    )  # warm-up

    start = time.perf_counter()
    ours = linear_probe(*train, *test, val_features=val[0], val_labels=val[1], device=device)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the weakest regularisation
        their_wd, their_score = sklearn_sweep(train, val, test, DEFAULT_WEIGHT_DECAYS)
    their_seconds = time.perf_counter() - start
    step = np.log(DEFAULT_WEIGHT_DECAYS[1] / DEFAULT_WEIGHT_DECAYS[0])
    steps = abs(np.log(ours.weight_decay / their_wd)) / step
    print(
        f"45-value sweep on {args.n} x {args.dim}, {args.classes} classes: "
        f"ours {ours_seconds:.1f} s "
        f"({device}; wd {ours.weight_decay:.3g}, test {100 * ours.score:.2f} %), scikit-learn "
        f"{their_seconds:.1f} s (wd {their_wd:.3g}, test {100 * their_score:.2f} %)"
    )
    return ours_seconds / their_seconds, steps, 100 * abs(ours.score - their_score)


def anonymous_memory() -> int:
    """Bytes of this process's anonymous memory (RssAnon): what it allocated, not the file pages
    a memory map brings in."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def bench_memory(args) -> float:
    """Peak anonymous memory added by the linear probe, kNN and few-shot episodes on a memory-mapped
    train split with no val split (80/20 held out) of ``--memory-rows`` x 64 features (several
    chunks of rows), over the size of those features: a copy of them would make it >= 1."""
    import threading

    from solo_stablerep.eval.probes import few_shot, knn_accuracy

    rng = np.random.default_rng(0)
    rows, dim, classes = args.memory_rows, 64, 10
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.npy"
        features = np.lib.format.open_memmap(path, "w+", np.float32, (rows, dim))
        labels = rng.integers(0, classes, rows)
        for start in range(0, rows, 1 << 16):
            stop = min(rows, start + (1 << 16))
            features[start:stop] = rng.normal(size=(stop - start, dim)) + labels[start:stop, None]
        features.flush()
        del features
        train = np.load(path, mmap_mode="r")
        test_x = rng.normal(size=(500, dim)).astype(np.float32)
        test_y = rng.integers(0, classes, 500)
        probes = [
            lambda x, y: linear_probe(x, y, test_x, test_y, weight_decays=[1e-2, 1], device="cpu"),
            lambda x, y: knn_accuracy(x, y, test_x, test_y, device="cpu"),
            lambda x, y: few_shot(x, y, episodes=20, device="cpu"),
        ]
        for probe in probes:  # warm-up on a quarter (a view): one-time buffers are not copies
            probe(train[: rows // 4], labels[: rows // 4])
        peak, baseline, running = [0], anonymous_memory(), [True]

        def sample():
            while running[0]:
                peak[0] = max(peak[0], anonymous_memory() - baseline)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for probe in probes:
                probe(train, labels)
        finally:
            running[0] = False
            sampler.join()
        size = train.nbytes
        del train
    print(
        f"memory: {rows} x {dim} memory-mapped features ({size / 2**20:.0f} MiB), no val split: "
        f"peak anonymous memory added by linear probe + kNN + few-shot {peak[0] / 2**20:.0f} MiB"
    )
    return peak[0] / size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="training features (protocol: 20000)")
    parser.add_argument("--dim", type=int, default=256, help="feature width (protocol: 768)")
    parser.add_argument("--classes", type=int, default=50, help="(protocol: 100)")
    parser.add_argument(
        "--images", type=int, default=512, help="images for the extraction benchmark"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="+", choices=["extraction", "sweep", "memory"], default=[], help="parts"
    )
    parser.add_argument(
        "--memory-rows", type=int, default=400_000, help="rows of the memory benchmark's features"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and for scikit-learn's "
        "BLAS/OpenMP alike (default: their defaults); 1 is steadier on a shared machine",
    )
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "memory" not in args.skip:
        ratio = bench_memory(args)  # first: the other parts leave the allocator fragmented
        print(f"RATIO eval_probe_peak_memory_vs_features {ratio:.3f} (goal < 1: never a copy)")
    if "extraction" not in args.skip:
        ratio = bench_extraction(args, device)
        print(f"RATIO eval_extraction_throughput_vs_bare_loop {ratio:.3f} (goal >= 0.95)")
    if "sweep" not in args.skip:
        time_ratio, steps, points = bench_sweep(args, device)
        print(f"RATIO eval_sweep_time_vs_sklearn {time_ratio:.3f} (goal <= 0.5)")
        print(f"RATIO eval_sweep_chosen_wd_grid_steps_from_sklearn {steps:.0f} (goal <= 1)")
        print(f"RATIO eval_sweep_test_accuracy_points_from_sklearn {points:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
