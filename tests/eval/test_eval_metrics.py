"""The transfer tables' metrics against examples worked by hand, and the 11-point AP against its
definition on scikit-learn's precision-recall curve (the authors' computation)."""

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from solo_stablerep.eval.metrics import (
    average_precision_11point,
    mean_average_precision_11point,
    mean_per_class_accuracy,
    top1_accuracy,
)


def test_top1_and_mean_per_class_accuracy_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0, 2])
    assert top1_accuracy(labels, predictions) == pytest.approx(5 / 7)
    # class 0: 3/4, class 1: 1/2, class 2: 1/1
    assert mean_per_class_accuracy(labels, predictions) == pytest.approx((0.75 + 0.5 + 1) / 3)


def test_mean_per_class_accuracy_ignores_classes_only_predicted():
    # class 5 is predicted but absent from the labels: it is no class of the test set
    assert mean_per_class_accuracy([1, 1, 2], [1, 5, 2]) == pytest.approx((0.5 + 1) / 2)


def test_11_point_average_precision_by_hand():
    # ranked: +, -, +, -, -  ->  (recall, precision) = (.5, 1), (.5, .5), (1, 2/3), (1, .5), (1, .4)
    # and the curve's end point (0, 1): levels 0..0.5 reach precision 1, levels 0.6..1 reach 2/3
    positives = [1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert average_precision_11point(positives, scores) == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_11_point_average_precision_counts_tied_scores_as_one_threshold():
    # 0.5 is one threshold: (recall .5, precision .5); then 0.1: (1, 2/3); plus (0, 1)
    assert average_precision_11point([1, 0, 1], [0.5, 0.5, 0.1]) == pytest.approx(
        (1 + 10 * 2 / 3) / 11
    )


def test_11_point_average_precision_is_the_authors_on_sklearns_curve():
    rng = np.random.default_rng(0)
    for _ in range(20):
        positives = rng.random(60) < 0.3
        scores = np.round(rng.normal(size=60) + positives, 1)  # rounding makes ties
        precision, recall, _ = precision_recall_curve(positives, scores)
        levels = [precision[recall >= t].max() for t in np.linspace(0, 1, 11)]
        assert average_precision_11point(positives, scores) == pytest.approx(
            np.mean(levels), abs=1e-12
        )


def test_mean_average_precision_averages_the_columns():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2], [0.6, 0.3], [0.5, 0.4]])
    # column 0 is the hand example above; column 1 ranks its one positive first: AP 1
    expected = ((6 + 5 * 2 / 3) / 11 + 1.0) / 2
    assert mean_average_precision_11point(targets, scores) == pytest.approx(expected)
