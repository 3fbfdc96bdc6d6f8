"""The probes of frozen features by the papers' protocols: linear transfer, weighted kNN, few-shot.

Each takes features already extracted (numpy arrays, memory maps or tensors, one row per image) and
labels, and returns fractions in [0, 1]. numpy, torch and scipy only: no solo-learn, no Lightning.

- :func:`linear_probe`: the fine-grained linear-transfer protocol of SynCLR (Tian et al., CVPR
  2024) and StableRep (Tian et al., NeurIPS 2023), after the authors'
  ``SynCLR/eval/main_downstream_linear.py``: features z-scored with the training split's
  statistics; L2-regularised multinomial logistic regression (L-BFGS, at most 1000 iterations,
  :mod:`.logistic`); weight decay swept over :data:`DEFAULT_WEIGHT_DECAYS` (45 values log-spaced
  in [1e-6, 1e5], C = 1/wd) and chosen on a validation split (the data set's own, else
  ``val_fraction`` of train drawn per class with seed ``seed``); refitted on train+val z-scored
  with train+val statistics; scored on test by the data set's metric (:mod:`.metrics`).
  The sweep runs from the strongest regularisation to the weakest, each fit starting from the
  previous solutions extrapolated along the path, with the previous fit's L-BFGS curvature pairs:
  the weakly regularised fits, the slow ones from scratch, then start next to their answer. Ties
  on validation go to the smallest weight decay, as the authors' ascending loop with a strict
  ``>`` does. (Solvers stop at a gradient of 1e-4,
  not at the exact optimum, so on a flat stretch of the validation curve another sweep order may
  pick a neighbouring value.)
- :func:`knn_accuracy`: solo-learn's weighted kNN (``solo/utils/knn.py``, Wu et al. 2018): cosine
  similarity of L2-normalised features, the k most similar training items vote for their class
  with weight exp(similarity / T).
- :func:`few_shot`: N-way K-shot episodes (the protocol of Tian et al., "Rethinking few-shot image
  classification", ECCV 2020): per episode, N classes and K support plus Q query items per class
  drawn at random; logistic regression (C = 1) on the L2-normalised support features; accuracy on
  the queries; mean and 95 % confidence interval (Student's t) over episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.logistic import (
    LogisticModel,
    RowSubset,
    Standardization,
    as_tensor,
    fit_logistic_regression,
    meets_tolerance,
)
from solo_stablerep.eval.metrics import (
    METRICS,
    mean_average_precision_11point,
    mean_per_class_accuracy,
    top1_accuracy,
)

DEFAULT_WEIGHT_DECAYS = np.logspace(-6, 5, 45)
KNN_DISTANCE_MATRIX_SIZE = 5_000_000  # similarities computed at once, as solo-learn's kNN
KNN_NORM_ROWS = 1 << 16  # training rows per chunk when computing their norms
FEW_SHOT_WEIGHT_DECAY = 1.0  # C = 1, scikit-learn's default, as the few-shot protocol uses
_FEW_SHOT_CHUNK_FLOATS = 1 << 25  # features of the episodes fitted together (256 MB in float64)


@dataclass(frozen=True)
class LinearProbeResult:
    """``score``: the test metric of the refitted model; ``weight_decay``: the one chosen;
    ``val_scores``: the validation metric of each of ``weight_decays`` (in their given order)."""

    score: float
    weight_decay: float
    val_scores: np.ndarray
    weight_decays: np.ndarray


@dataclass(frozen=True)
class FewShotResult:
    """``mean`` accuracy over episodes and the half-width ``ci95`` of its 95 % interval;
    ``accuracies`` holds each episode's."""

    mean: float
    ci95: float
    accuracies: np.ndarray


# ----------------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 20,
    temperature: float = 0.07,
    *,
    device=None,
) -> float:
    """Top-1 accuracy of solo-learn's weighted kNN classifier (cosine, ``k`` neighbours,
    weights exp(cos / ``temperature``)) on these features; the same number as
    ``solo.utils.knn.WeightedKNNClassifier(k, temperature)`` (which reports percent)."""

    if k < 1 or not temperature > 0:  # k 0 would vote for nobody: chance, as if a score
        raise EvalError(f"knn_accuracy needs k >= 1 and temperature > 0, got {k}, {temperature}")
    train = as_tensor(train_features, device)  # a memory map stays one: norms apart, no copy
    inverse_norms = torch.cat(
        [1 / rows.norm(dim=1).clamp_min(1e-12) for rows in train.split(KNN_NORM_ROWS)]
    )
    test = as_tensor(test_features, device)
    train_y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long, device=train.device)
    test_y = torch.as_tensor(np.asarray(test_labels), dtype=torch.long, device=train.device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train))
    chunk = max(1, KNN_DISTANCE_MATRIX_SIZE // len(train))
    correct = 0
    for start in range(0, len(test), chunk):
        queries = F.normalize(test[start : start + chunk], dim=1)
        similarities, neighbours = (queries @ train.T).mul_(inverse_norms).topk(k, dim=1)
        votes = torch.zeros(len(neighbours), num_classes, device=train.device)
        votes.scatter_add_(1, train_y[neighbours], (similarities / temperature).exp())
        correct += (votes.argmax(1) == test_y[start : start + chunk]).sum().item()
    return correct / len(test)


# ------------------------------------------------------------------------------ linear probe


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    val_features=None,
    val_labels=None,
    val_fraction: float = 0.2,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    metric: str = "top1",
    seed: int = 0,
    device=None,
) -> LinearProbeResult:
    """The linear-transfer protocol (module docstring) on extracted features.

    Args:
        train_features, test_features, val_features: (N, D) features of each split.
        train_labels, test_labels, val_labels: (N,) class labels; for ``metric="map11"``, (N, C)
            zeros and ones (one binary classifier per class, VOC2007).
        val_fraction: share of train held out per class for choosing the weight decay when there is
            no ``val_features``.
        weight_decays: the sweep (λ = 1/C).
        metric: ``"top1"``, ``"mean_per_class"`` or ``"map11"``.
        seed: of the held-out validation draw.
        device: where the solver runs (default: CUDA when available, else CPU).
    """

    if metric not in METRICS:
        raise EvalError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if (val_features is None) != (val_labels is None):
        raise EvalError("linear_probe: give val_features and val_labels together, or neither")
    if len(weight_decays) == 0:
        raise EvalError("linear_probe: weight_decays is empty")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task = _Task(metric, [train_labels] if val_labels is None else [train_labels, val_labels])

    if val_features is None:
        fit_rows, val_rows = _held_out_split(train_labels, val_fraction, seed, task.binary_targets)
        labels = np.asarray(train_labels)
        # train's rows in place, no copy: read chunk by chunk at each evaluation on the CPU; on
        # another device, gathered there (chunk by chunk: the device copy is the solver's own)
        held = (
            RowSubset(train_features, fit_rows, device),
            RowSubset(train_features, val_rows, device),
        )
        if device.type != "cpu":
            held = tuple(rows.gathered() for rows in held)
        sweep_train = (held[0], task.encode(labels[fit_rows]))
        sweep_val = (held[1], labels[val_rows])
        final_blocks = [(train_features, train_labels)]
    else:
        sweep_train = (train_features, task.encode(train_labels))
        sweep_val = (val_features, val_labels)
        final_blocks = [(train_features, train_labels), (val_features, val_labels)]

    train_block = task.block(*sweep_train, device)
    val_x = task.features(sweep_val[0], device)
    standardization = Standardization.of([train_block[0]])
    weight_decays = np.asarray(weight_decays, dtype=np.float64)
    val_scores = np.empty(len(weight_decays))
    models, path = {}, []
    previous = None
    for i in np.argsort(-weight_decays, kind="stable"):  # strong to weak regularisation
        last = path[-1][1] if path else None
        if last is not None and meets_tolerance(last, weight_decays[i], train_block[0].shape[0]):
            models[i] = last  # what scikit-learn's warm start returns too, here at no cost
            val_scores[i] = val_scores[previous]
        else:
            start = _extrapolate(path, weight_decays[i])
            models[i] = task.fit([train_block], weight_decays[i], standardization, start)
            val_scores[i] = task.score(models[i], val_x, sweep_val[1])
        path.append((weight_decays[i], models[i]))
        previous = i
    best = _best_index(val_scores, weight_decays)
    del train_block, val_x

    blocks = [task.block(x, task.encode(y), device) for x, y in final_blocks]
    standardization = Standardization.of([x for x, _ in blocks])
    start = models[best].restandardized(standardization)
    model = task.fit(blocks, weight_decays[best], standardization, start)
    score = task.score(model, as_tensor(test_features, device), test_labels)
    return LinearProbeResult(score, float(weight_decays[best]), val_scores, weight_decays)


def _extrapolate(path, weight_decay: float) -> LogisticModel | None:
    """Warm start for ``weight_decay``: the last solution of the ``path`` (weight decay, model),
    moved along the line through the last two in log weight decay, the step scaled by the ratio of
    the last two increments (capped at 2): the increments change nearly geometrically along the
    grid (W ∝ C where the penalty dominates: x1.78 per step; shrinking where the data term
    does). On the sweep of bench/bench_eval.py at the protocol's size this start needs 51 L-BFGS
    evaluations in all, against 63 for the plain line and about twice that for the last solution
    alone. The model keeps the last fit's curvature pairs (:class:`.logistic.Curvature`)."""
    if len(path) < 2:
        return path[-1][1] if path else None
    (wd_before, before), (wd_last, last) = path[-2], path[-1]
    step = (
        np.log(weight_decay / wd_last) / np.log(wd_last / wd_before)
        if wd_last != wd_before
        else 0.0
    )
    if len(path) >= 3:
        last_increment = float((last.weight - before.weight).norm())
        increment_before = float((before.weight - path[-3][1].weight).norm())
        if last_increment > 0 and increment_before > 0:
            step *= min(last_increment / increment_before, 2.0)
    return LogisticModel(
        last.weight + step * (last.weight - before.weight),
        last.bias + step * (last.bias - before.bias),
        last.binary,
        last.standardization,
        curvature=last.curvature,
    )


def _best_index(val_scores: np.ndarray, weight_decays: np.ndarray) -> int:
    """The best validation score; among equal ones, the smallest weight decay."""
    tied = np.flatnonzero(val_scores == val_scores.max())
    return int(tied[np.argmin(weight_decays[tied])])


def _held_out_split(labels, fraction: float, seed: int, multilabel: bool):
    """(fit rows, validation rows) of train: ``fraction`` of each class's rows (rounded, keeping at
    least one row of the class for fitting), drawn with ``seed``; for multi-label targets, of all
    rows."""
    if not 0 < fraction < 1:
        raise EvalError(f"val_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if multilabel:
        groups = [np.arange(len(labels))]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held_out = []
    for rows in groups:
        count = min(int(round(fraction * len(rows))), len(rows) - 1)
        held_out.append(rng.permutation(rows)[:count])
    val_rows = np.sort(np.concatenate(held_out))
    if len(val_rows) == 0:
        raise EvalError(
            f"the training split ({len(labels)} items) is too small to hold out {fraction:.0%} "
            "for validation: give a validation split"
        )
    return np.setdiff1d(np.arange(len(labels)), val_rows), val_rows


class _Task:
    """How labels become solver targets and how a model is scored, for one metric."""

    def __init__(self, metric: str, fit_labels: list):
        self.metric = metric
        self.binary_targets = metric == "map11"
        if self.binary_targets:
            self.num_outputs = np.asarray(fit_labels[0]).reshape(len(fit_labels[0]), -1).shape[1]
            self.classes = None
            self.binary = True
        else:
            seen = [np.asarray(labels).reshape(-1) for labels in fit_labels]
            self.classes = np.unique(np.concatenate(seen))
            if len(self.classes) < 2:
                raise EvalError(
                    f"linear_probe needs at least 2 classes in train, got {len(self.classes)}"
                )
            # two classes: one binary classifier, as scikit-learn fits them
            self.binary = len(self.classes) == 2
            self.num_outputs = 1 if self.binary else len(self.classes)

    def encode(self, labels) -> np.ndarray:
        """Class indices in [0, num_classes), or the 0/1 targets of the binary classifiers."""
        labels = np.asarray(labels)
        if self.binary_targets:
            if labels.ndim != 2 or labels.shape[1] != self.num_outputs:
                raise EvalError(
                    f"map11 needs (N, {self.num_outputs}) 0/1 labels, got shape {labels.shape}"
                )
            return labels.astype(np.float32)
        return np.searchsorted(self.classes, labels)

    @staticmethod
    def features(features, device):
        return features if isinstance(features, RowSubset) else as_tensor(features, device)

    def block(self, features, encoded, device):
        x = self.features(features, device)
        if self.binary and not self.binary_targets:
            return x, torch.as_tensor(encoded == 1, dtype=x.dtype, device=device).unsqueeze(1)
        dtype = x.dtype if self.binary_targets else torch.long
        return x, torch.as_tensor(encoded, dtype=dtype, device=device)

    def fit(self, blocks, weight_decay, standardization, init) -> LogisticModel:
        return fit_logistic_regression(
            blocks,
            float(weight_decay),
            self.num_outputs,
            binary=self.binary,
            standardization=standardization,
            init=init,
        )

    @torch.no_grad()
    def score(self, model: LogisticModel, features: torch.Tensor, labels) -> float:
        if self.binary_targets:
            scores = model.decision_function(features).cpu().numpy()
            return mean_average_precision_11point(np.asarray(labels), scores)
        predictions = self.classes[model.predict(features).cpu().numpy()]
        if self.metric == "mean_per_class":
            return mean_per_class_accuracy(labels, predictions)
        return top1_accuracy(labels, predictions)


# --------------------------------------------------------------------------------- few-shot


def few_shot(
    features,
    labels,
    *,
    ways: int = 5,
    shots: int = 5,
    episodes: int = 600,
    queries: int = 15,
    seed: int = 0,
    device=None,
) -> FewShotResult:
    """Mean accuracy and 95 % interval over ``episodes`` ``ways``-way ``shots``-shot episodes drawn
    from the classes of (``features``, ``labels``) that have at least ``shots + queries`` items;
    ``ways`` may be all of them. Episodes are fitted in batches (independent problems, one
    L-BFGS run), so the same ``seed`` gives the same episodes and the same numbers."""

    if episodes < 2 or ways < 2 or shots < 1 or queries < 1:
        raise EvalError(
            f"few_shot needs ways >= 2, shots >= 1, queries >= 1 and episodes >= 2 (for a 95 % "
            f"interval), got ways={ways}, shots={shots}, queries={queries}, episodes={episodes}"
        )
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= shots + queries]
    if len(eligible) < ways:
        raise EvalError(
            f"few_shot: {ways}-way episodes with {shots} shots and {queries} queries need {ways} "
            f"classes of >= {shots + queries} items; this set has {len(eligible)}"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # float64: on features that point almost one way (a collapsed backbone) the episodes' logits
    # differ by less than float32 resolves in J, and L-BFGS stopped at W = 0 (chance accuracy)
    features = as_tensor(features, device, dtype=torch.float64)  # drawn rows only are normalised
    rng = np.random.default_rng(seed)
    rows_of = {c: np.flatnonzero(labels == c) for c in eligible}
    drawn = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(eligible, ways, replace=False)):
            drawn[e, w] = rng.choice(rows_of[c], shots + queries, replace=False)

    per_chunk = max(1, _FEW_SHOT_CHUNK_FLOATS // (ways * (shots + queries) * features.shape[1]))
    way_of = torch.arange(ways, device=device)
    accuracies = []
    for start in range(0, episodes, per_chunk):
        rows = torch.as_tensor(drawn[start : start + per_chunk], device=device)
        support = F.normalize(features[rows[:, :, :shots].reshape(len(rows), -1)], dim=-1)
        query = F.normalize(features[rows[:, :, shots:].reshape(len(rows), -1)], dim=-1)
        support_y = way_of.repeat_interleave(shots).expand(len(rows), -1)
        query_y = way_of.repeat_interleave(queries).expand(len(rows), -1)
        binary = ways == 2  # scikit-learn fits two classes as one binary classifier
        targets = support_y.unsqueeze(-1).to(support.dtype) if binary else support_y
        model = fit_logistic_regression(
            [(support, targets)], FEW_SHOT_WEIGHT_DECAY, 1 if binary else ways, binary=binary
        )
        with torch.no_grad():
            accuracies.append((model.predict(query) == query_y).double().mean(1).cpu().numpy())
    accuracies = np.concatenate(accuracies)
    half_width = stats.t.ppf(0.975, episodes - 1) * accuracies.std(ddof=1) / np.sqrt(episodes)
    return FewShotResult(float(accuracies.mean()), float(half_width), accuracies)
