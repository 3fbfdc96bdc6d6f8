"""The scores of the transfer tables, as fractions in [0, 1] (numpy only).

- top-1 accuracy (Cars, DTD, Food-101, SUN397, CIFAR-10/100, ...);
- mean per-class accuracy (FGVC-Aircraft, Caltech-101, Flowers-102, Oxford-IIIT Pets): the recall of
  each class present in the true labels, averaged over those classes, so that a small class weighs
  as much as a large one;
- 11-point mean average precision (VOC2007, multi-label): per class, the mean over the recall levels
  t = 0, 0.1, ..., 1 of the best precision reached at a recall of at least t, averaged over classes.

The 11-point AP follows the authors of the protocol (``google-research/syn-rep-learn``,
``SynCLR/eval/main_downstream_linear.py``): its precision-recall curve is scikit-learn's
``precision_recall_curve``, one point per distinct score plus the point (recall 0, precision 1) that
curve ends on, so the t = 0 level always counts precision 1. (The original VOC devkit has no such
point; the authors' numbers, which the tables reproduce, include it.)
"""

from __future__ import annotations

import numpy as np

METRICS = ("top1", "mean_per_class", "map11")


def top1_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (1-D integer arrays)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions))


def mean_per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their items predicted
    right."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes, class_of_item = np.unique(labels, return_inverse=True)
    correct = np.bincount(class_of_item, weights=labels == predictions, minlength=len(classes))
    return float(np.mean(correct / np.bincount(class_of_item, minlength=len(classes))))


def average_precision_11point(positives: np.ndarray, scores: np.ndarray) -> float:
    """11-point interpolated average precision of one binary task.

    Args:
        positives: (N,) booleans (or 0/1), True where the item belongs to the class.
        scores: (N,) the classifier's scores, higher meaning more likely positive.

    A class without a positive item has AP 1/11 (only the t = 0 level, as in the authors' code).
    """
    positives = np.asarray(positives).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positives = scores[order], positives[order]
    # one point per distinct score: everything scored at least that high is called positive
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(sorted_positives)[last_of_tie]
    called = last_of_tie + 1
    precision = np.r_[1.0, true_pos / called]
    recall = np.r_[0.0, true_pos / max(positives.sum(), 1)]
    levels = np.linspace(0, 1, 11)
    best = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in levels]
    return float(np.mean(best))


def mean_average_precision_11point(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean over classes (columns) of :func:`average_precision_11point`; ``targets`` and ``scores``
    are (N, C): 0/1 memberships and one binary classifier's scores per class."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    columns = range(targets.shape[1])
    return float(np.mean([average_precision_11point(targets[:, c], scores[:, c]) for c in columns]))
