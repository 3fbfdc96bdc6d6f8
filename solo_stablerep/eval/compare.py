"""Side-by-side comparison: every model × every data set × every probe, features from the cache.

Each model's features of each split of each data set are read from the cache or extracted
(:mod:`.features`; under ``torchrun`` by all ranks together), then the probes run on them
(:mod:`.probes`; on rank 0 alone under ``torchrun``):

- ``linear``: the linear-transfer protocol with the data set's metric, on train (+ its val split);
- ``knn``: weighted kNN, train -> test (single-label data sets);
- ``fewshot``: ``ways``-way ``shots``-shot episodes drawn from the test split's classes, for each
  of ``shots`` (single-label data sets; ``ways`` capped at the number of classes with enough items).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.backbone import BackboneSpec, load_backbone, read_spec
from solo_stablerep.eval.cache import FeatureCache
from solo_stablerep.eval.datasets import EvalDataset, image_transform, open_dataset
from solo_stablerep.eval.features import ExtractionSettings, split_features
from solo_stablerep.eval.probes import few_shot, knn_accuracy, linear_probe
from solo_stablerep.eval.report import Result

log = logging.getLogger(__name__)

PROBES = ("linear", "knn", "fewshot")
DEFAULT_IMAGE_SIZE = 224  # the protocol's resolution, for models without a pretraining crop size
FIXED_SIZE_BACKBONES = ("vit_", "swin_")


@dataclass
class ProbeSettings:
    probes: Sequence[str] = PROBES
    weight_decays: Sequence[float] = tuple(np.logspace(-6, 5, 45))
    knn_k: int = 20
    knn_temperature: float = 0.07
    ways: int = 5
    shots: Sequence[int] = (1, 5)
    episodes: int = 600
    queries: int = 15
    seed: int = 0
    image_size: int | None = None  # None: each model's pretraining crop size (224 for random)
    device: str | None = None

    def summary(self) -> dict:
        return {
            "probes": list(self.probes),
            "linear": {"weight_decays": [float(w) for w in self.weight_decays], "max_iter": 1000},
            "knn": {"k": self.knn_k, "temperature": self.knn_temperature},
            "fewshot": {
                "ways": self.ways,
                "shots": list(self.shots),
                "episodes": self.episodes,
                "queries": self.queries,
                "seed": self.seed,
            },
            "image_size": self.image_size,
        }


@dataclass
class Comparison:
    models: list[BackboneSpec]
    datasets: list[EvalDataset] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a probe that could not run, and why


@dataclass(frozen=True)
class PlannedProbe:
    """A probe to run on a data set: ``kind`` one of :data:`PROBES`; few-shot's ways and shots."""

    kind: str
    ways: int = 0
    shots: int = 0


def plan_probes(dataset: EvalDataset, settings: ProbeSettings) -> tuple[list, list[str]]:
    """The probes of ``settings`` that can run on ``dataset``, and a line for each that cannot
    (a multi-label set has no kNN or episodes; episodes need 2 test classes with enough items):
    from the labels alone, before any feature is extracted."""
    runs, skipped = [], []
    if "linear" in settings.probes:
        fit_labels = [dataset.splits[s].labels for s in ("train", "val") if s in dataset.splits]
        classes = len(np.unique(np.concatenate(fit_labels)))
        if dataset.multilabel or classes >= 2:
            runs.append(PlannedProbe("linear"))
        else:
            skipped.append(f"{dataset.name} linear: train has {classes} class(es), it needs 2")
    for kind in ("knn", "fewshot"):
        if dataset.multilabel and kind in settings.probes:
            skipped.append(f"{dataset.name} {kind}: multi-label, it needs one class per image")
    if dataset.multilabel:
        return runs, skipped
    if "knn" in settings.probes:
        runs.append(PlannedProbe("knn"))
    if "fewshot" in settings.probes:
        _, counts = np.unique(dataset.splits["test"].labels, return_counts=True)
        for shots in settings.shots:
            items = shots + settings.queries
            enough = int((counts >= items).sum())
            if enough < 2:
                skipped.append(
                    f"{dataset.name} {shots}-shot: episodes need 2 test classes of >= {items} "
                    f"items ({shots} shots + {settings.queries} queries); {enough} have as many"
                )
            else:
                runs.append(PlannedProbe("fewshot", min(settings.ways, enough), shots))
    return runs, skipped


def _labels_of_models(specs: list[BackboneSpec]) -> None:
    """Row names: each model's run name, made unique with its spec where two share one."""
    seen: dict[str, int] = {}
    for spec in specs:
        seen[spec.label] = seen.get(spec.label, 0) + 1
    for spec in specs:
        if seen[spec.label] > 1:
            spec.label = f"{spec.label} ({spec.spec})"


def compare(
    model_specs: Sequence[str],
    dataset_specs: Sequence[str],
    cache: FeatureCache,
    probe_settings: ProbeSettings,
    extraction: ExtractionSettings,
) -> Comparison:
    unknown = [p for p in probe_settings.probes if p not in PROBES]
    if unknown:
        raise EvalError(f"unknown probe {unknown[0]!r}: choose among {', '.join(PROBES)}")
    models = [read_spec(spec) for spec in model_specs]
    _labels_of_models(models)
    datasets = [open_dataset(spec) for spec in dataset_specs]  # all checked before any work
    plans = [plan_probes(dataset, probe_settings) for dataset in datasets]
    skipped = [line for _, lines in plans for line in lines]
    if not any(runs for runs, _ in plans):
        raise EvalError(f"no probe can run: {'; '.join(skipped)}")
    for line in skipped:
        log.warning("skipped: %s", line)
    comparison = Comparison(models, datasets, skipped=skipped)
    built: dict[str, object] = {}

    def backbone_of(spec: BackboneSpec):
        def get():
            if spec.spec not in built:
                built.clear()
                built[spec.spec] = load_backbone(spec)
            return built[spec.spec]

        return get

    sizes = [_input_size(spec, probe_settings.image_size) for spec in models]
    features: dict[tuple[int, int], dict[str, tuple]] = {}  # all extracted before any probe
    for m, (spec, size) in enumerate(
        zip(models, sizes, strict=True)
    ):  # one backbone at a time, built at
        for d, dataset in enumerate(datasets):  # its first cache miss
            transform_identity = {
                "resize": "bicubic-short-side+center-crop",
                "size": size,
                "mean": list(spec.mean),
                "std": list(spec.std),
            }
            transform = image_transform(size, spec.mean, spec.std)
            features[m, d] = {}
            for split_name, split in dataset.splits.items():
                identity = {
                    "model": spec.identity,
                    "dataset": dataset.identity,
                    "split": split_name,
                    "transform": transform_identity,
                }
                features[m, d][split_name] = split_features(
                    cache,
                    identity,
                    split,
                    transform,
                    backbone_of(spec),
                    extraction,
                    f"{spec.label} | {dataset.spec} | {split_name}",
                )
    built.clear()
    if extraction.ranks.is_main:  # under torchrun the other ranks are done: features only
        for (m, d), splits in features.items():
            runs = plans[d][0]
            comparison.results += _probe(models[m].label, datasets[d], splits, runs, probe_settings)
    return comparison


def _input_size(spec: BackboneSpec, requested: int | None) -> int:
    """The resolution ``spec``'s images are resized to. A ViT or Swin fixes it when built (its
    position embeddings, its windows): a random one is built for it, a checkpoint's must match."""
    size = requested or spec.crop_size or DEFAULT_IMAGE_SIZE
    if spec.backbone_name.startswith(FIXED_SIZE_BACKBONES):
        built_for = spec.backbone_kwargs.get("img_size", DEFAULT_IMAGE_SIZE)
        if spec.checkpoint is None:
            spec.backbone_kwargs["img_size"] = size
            spec.identity["kwargs"] = dict(spec.backbone_kwargs)
        elif size != built_for:
            raise EvalError(
                f"{spec.spec}: its {spec.backbone_name} was built for {built_for} px images: "
                f"use --image-size {built_for}"
            )
    return size


def _probe(model: str, dataset: EvalDataset, features: dict[str, tuple], runs, settings):
    """One Result per planned probe of ``runs`` (:func:`plan_probes`) on ``model``'s features."""
    return [
        Result(model, dataset.name, probe, metric, score, **fields)
        for probe, metric, score, fields in _scores(model, dataset, features, runs, settings)
    ]


def _scores(model: str, dataset: EvalDataset, features: dict[str, tuple], runs, settings):
    """(probe column, metric, score, the Result's other fields) of each planned probe."""
    train_x, train_y = features["train"]
    test_x, test_y = features["test"]
    val_x, val_y = features.get("val", (None, None))
    for run in runs:
        if run.kind == "linear":
            log.info(
                "%s on %s: linear probe (%d weight decays)",
                model,
                dataset.name,
                len(settings.weight_decays),
            )
            linear = linear_probe(
                train_x,
                train_y,
                test_x,
                test_y,
                val_features=val_x,
                val_labels=val_y,
                weight_decays=settings.weight_decays,
                metric=dataset.metric,
                seed=settings.seed,
                device=settings.device,
            )
            curve = {
                "val_scores": linear.val_scores.tolist(),
                "weight_decays": linear.weight_decays.tolist(),
            }
            fields = {"weight_decay": linear.weight_decay, "details": curve}
            yield "linear", dataset.metric, linear.score, fields
        elif run.kind == "knn":
            score = knn_accuracy(
                train_x,
                train_y,
                test_x,
                test_y,
                settings.knn_k,
                settings.knn_temperature,
                device=settings.device,
            )
            knn = {"k": settings.knn_k, "temperature": settings.knn_temperature}
            yield "kNN", "top1", score, {"details": knn}
        else:
            episodes = few_shot(
                test_x,
                test_y,
                ways=run.ways,
                shots=run.shots,
                episodes=settings.episodes,
                queries=settings.queries,
                seed=settings.seed,
                device=settings.device,
            )
            drawn = {
                "ways": run.ways,
                "shots": run.shots,
                "episodes": settings.episodes,
                "queries": settings.queries,
            }
            fields = {"ci95": episodes.ci95, "details": drawn}
            yield f"{run.ways}-way {run.shots}-shot", "top1", episodes.mean, fields
