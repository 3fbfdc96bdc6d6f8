"""The probes: kNN against solo-learn's own classifier, the linear-transfer protocol against the
same protocol run with scikit-learn, the held-out validation split, few-shot episodes."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import requires_solo
from scipy import stats
from sklearn.linear_model import LogisticRegression

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.probes import (
    DEFAULT_WEIGHT_DECAYS,
    _held_out_split,
    few_shot,
    knn_accuracy,
    linear_probe,
)


def blobs(num_items, dim=32, num_classes=10, noise=2.0, seed=0):
    """Overlapping Gaussian classes (not separable: the validation curve has one clear peak)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_items)
    centres = rng.normal(size=(num_classes, dim))
    features = (centres[labels] + noise * rng.normal(size=(num_items, dim))) * 3 + 1
    return features.astype(np.float32), labels


# ------------------------------------------------------------------------------------ kNN


@requires_solo
@pytest.mark.parametrize("k", [5, 20, 500])  # 500 > the training set: all of it votes
def test_knn_is_solo_learns_weighted_knn(k):
    """solo-learn's own ``WeightedKNNClassifier.compute`` on the same features. Its constructor
    passes ``compute_on_step``, which the torchmetrics installed beside solo-learn 1.0.6 rejects, so
    the method runs directly on its memory banks and settings (the attributes its constructor
    sets)."""
    from solo.utils.knn import WeightedKNNClassifier

    train_x, train_y = blobs(300, noise=3.0, seed=1)
    test_x, test_y = blobs(120, noise=3.0, seed=2)
    banks = SimpleNamespace(
        k=k,
        T=0.07,
        max_distance_matrix_size=int(5e6),
        distance_fx="cosine",
        epsilon=1e-5,
        train_features=[torch.from_numpy(train_x)],
        train_targets=[torch.from_numpy(train_y)],
        test_features=[torch.from_numpy(test_x)],
        test_targets=[torch.from_numpy(test_y)],
        reset=lambda: None,
    )
    solo_top1, _ = WeightedKNNClassifier.compute(banks)
    ours = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=0.07)
    assert 0 < ours < 1  # a case where the vote matters
    assert ours * 100 == pytest.approx(solo_top1, abs=1e-9)


def test_knn_chunks_the_similarities(monkeypatch):
    from solo_stablerep.eval import probes

    train_x, train_y = blobs(200, noise=3.0, seed=3)
    test_x, test_y = blobs(50, noise=3.0, seed=4)
    whole = knn_accuracy(train_x, train_y, test_x, test_y)
    monkeypatch.setattr(probes, "KNN_DISTANCE_MATRIX_SIZE", 7 * 200)  # 7 test rows at a time
    assert knn_accuracy(train_x, train_y, test_x, test_y) == whole


@pytest.mark.parametrize("k, temperature", [(0, 0.07), (-1, 0.07), (20, 0.0), (20, float("nan"))])
def test_knn_refuses_no_neighbours_or_no_temperature(k, temperature):
    """k 0 voted for nobody: every prediction class 0, chance reported as a score."""
    train_x, train_y = blobs(20, noise=1.0, seed=3)
    with pytest.raises(EvalError, match="k >= 1 and temperature > 0"):
        knn_accuracy(train_x, train_y, train_x, train_y, k=k, temperature=temperature)


# ------------------------------------------------------------------------------ linear probe


def sklearn_protocol(train, val, test, weight_decays):
    """The authors' protocol with scikit-learn: ascending sweep with warm starts, strict '>' on the
    validation accuracy, refit on train+val z-scored by its own statistics."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    mean, std = train_x.mean(0), train_x.std(0)
    model = LogisticRegression(max_iter=1000, warm_start=True)
    best_score, best_c = 0.0, None
    for weight_decay in weight_decays:
        model.set_params(C=1 / weight_decay)
        model.fit((train_x - mean) / std, train_y)
        score = model.score((val_x - mean) / std, val_y)
        if score > best_score:
            best_score, best_c = score, 1 / weight_decay
    trainval_x, trainval_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    mean, std = trainval_x.mean(0), trainval_x.std(0)
    model = LogisticRegression(max_iter=1000, C=best_c).fit((trainval_x - mean) / std, trainval_y)
    return 1 / best_c, model.score((test_x - mean) / std, test_y)


def test_linear_probe_with_the_45_weight_decays_agrees_with_sklearn():
    """Chosen weight decay within one grid step of scikit-learn's and test accuracy within 1 point.
    Measured over 5 draws of these blobs: the same or the next grid value, at most 0.33 points apart
    (both solvers stop at a gradient of 1e-4, not at the optimum; ours sweeps strong to weak)."""
    x, y = blobs(2400)
    train, val, test = (x[:1200], y[:1200]), (x[1200:1800], y[1200:1800]), (x[1800:], y[1800:])
    ours = linear_probe(*train, *test, val_features=val[0], val_labels=val[1])
    assert len(DEFAULT_WEIGHT_DECAYS) == 45
    assert DEFAULT_WEIGHT_DECAYS[0] == pytest.approx(1e-6) and DEFAULT_WEIGHT_DECAYS[
        -1
    ] == pytest.approx(1e5)
    assert np.array_equal(ours.weight_decays, DEFAULT_WEIGHT_DECAYS) and ours.val_scores.shape == (
        45,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the weakest regularisation
        their_weight_decay, their_score = sklearn_protocol(train, val, test, DEFAULT_WEIGHT_DECAYS)
    steps = np.log(ours.weight_decay / their_weight_decay) / np.log(
        DEFAULT_WEIGHT_DECAYS[1] / DEFAULT_WEIGHT_DECAYS[0]
    )
    assert abs(steps) <= 1 + 1e-6
    assert ours.score == pytest.approx(their_score, abs=0.01)
    assert (
        ours.val_scores[np.flatnonzero(DEFAULT_WEIGHT_DECAYS == ours.weight_decay)[0]]
        == ours.val_scores.max()
    )


def test_linear_probe_holds_out_part_of_train_when_there_is_no_val_split():
    x, y = blobs(600, num_classes=4, noise=1.0)
    weight_decays = np.logspace(-2, 2, 5)
    held_out = linear_probe(x[:400], y[:400], x[400:], y[400:], weight_decays=weight_decays, seed=3)
    fit_rows, val_rows = _held_out_split(y[:400], 0.2, 3, multilabel=False)
    explicit = linear_probe(
        x[:400][fit_rows],
        y[:400][fit_rows],
        x[400:],
        y[400:],
        weight_decays=weight_decays,
        val_features=x[:400][val_rows],
        val_labels=y[:400][val_rows],
    )
    # the same validation scores; the refit differs (train alone vs train+val: the same rows here)
    assert np.array_equal(held_out.val_scores, explicit.val_scores)
    assert held_out.weight_decay == explicit.weight_decay
    assert held_out.score == pytest.approx(explicit.score, abs=0.01)


def test_held_out_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 1])
    fit_rows, val_rows = _held_out_split(labels, 0.2, 0, multilabel=False)
    assert set(fit_rows).isdisjoint(val_rows) and len(fit_rows) + len(val_rows) == len(labels)
    assert np.bincount(labels[val_rows], minlength=3).tolist() == [10, 6, 0]  # the lone item stays
    again, _ = _held_out_split(labels, 0.2, 0, multilabel=False)
    other, _ = _held_out_split(labels, 0.2, 1, multilabel=False)
    assert np.array_equal(fit_rows, again) and not np.array_equal(fit_rows, other)


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_linear_probe_metric_and_labels_of_any_values(metric):
    """String class labels and two classes (one binary classifier, as scikit-learn fits them)."""
    x, y = blobs(400, num_classes=2, noise=1.0)
    names = np.array(["cat", "dog"])[y]
    result = linear_probe(
        x[:300], names[:300], x[300:], names[300:], weight_decays=[1.0], metric=metric
    )
    assert result.score > 0.9  # blobs one noise unit wide around centres ~sqrt(2*32) apart
    reference = LogisticRegression(C=1.0, max_iter=1000)
    mean, std = x[:300].mean(0), x[:300].std(0)
    predicted = reference.fit((x[:300] - mean) / std, names[:300]).predict((x[300:] - mean) / std)
    if metric == "top1":
        assert result.score == pytest.approx(np.mean(predicted == names[300:]), abs=0.01)


def test_linear_probe_map11_fits_one_binary_classifier_per_class():
    x, y = blobs(500, num_classes=4, noise=1.5)
    targets = np.eye(4)[y]
    targets[::7, 0] = 1  # multi-label: some items also belong to class 0
    result = linear_probe(
        x[:400], targets[:400], x[400:], targets[400:], weight_decays=[0.1, 10.0], metric="map11"
    )
    assert 1 / 11 < result.score <= 1 and result.val_scores.shape == (2,)
    with pytest.raises(EvalError, match="map11 needs"):
        linear_probe(x[:400], y[:400], x[400:], y[400:], metric="map11")


def test_linear_probe_bad_settings_are_one_line_errors():
    x, y = blobs(50)
    with pytest.raises(EvalError, match="unknown metric 'top5'"):
        linear_probe(x, y, x, y, metric="top5")
    with pytest.raises(EvalError, match="val_features and val_labels together"):
        linear_probe(x, y, x, y, val_features=x)
    with pytest.raises(EvalError, match="at least 2 classes"):
        linear_probe(x, np.zeros(50, int), x, y)


# -------------------------------------------------------------------------------- few-shot


def test_few_shot_mean_interval_and_reproducibility():
    x, y = blobs(400, num_classes=8, noise=2.5)
    result = few_shot(x, y, ways=5, shots=1, episodes=40, queries=5, seed=0)
    assert result.accuracies.shape == (40,)
    assert result.mean == pytest.approx(result.accuracies.mean())
    t = stats.t.ppf(0.975, 39)
    assert result.ci95 == pytest.approx(t * result.accuracies.std(ddof=1) / np.sqrt(40))
    assert 0.2 < result.mean < 1.0  # neither chance (1/5) nor perfect: the episodes differ
    again = few_shot(x, y, ways=5, shots=1, episodes=40, queries=5, seed=0)
    assert np.array_equal(result.accuracies, again.accuracies)
    other = few_shot(x, y, ways=5, shots=1, episodes=40, queries=5, seed=1)
    assert not np.array_equal(result.accuracies, other.accuracies)


def test_few_shot_episode_is_sklearns_logistic_regression_on_l2_normalised_features():
    """With all classes as the ways: each episode's accuracy is that of scikit-learn's
    LogisticRegression (C = 1) fitted on the L2-normalised support set."""
    x, y = blobs(120, dim=8, num_classes=3, noise=3.0, seed=5)
    result = few_shot(x, y, ways=3, shots=4, episodes=6, queries=10, seed=7)
    rng = np.random.default_rng(7)  # the draw few_shot makes: classes, then items of each
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    for accuracy in result.accuracies:
        rows = [
            rng.choice(np.flatnonzero(y == c), 14, replace=False)
            for c in rng.choice(3, 3, replace=False)
        ]
        support = np.concatenate([r[:4] for r in rows])
        query = np.concatenate([r[4:] for r in rows])
        way = np.repeat(np.arange(3), 4)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(normalised[support], way)
        expected = np.mean(model.predict(normalised[query]) == np.repeat(np.arange(3), 10))
        assert accuracy == pytest.approx(expected, abs=1 / 30 + 1e-9)  # one query of 30 at most


def test_few_shot_fits_600_episodes_of_features_that_point_one_way_as_sklearn_does():
    """The demo's protocol (600 5-way 5-shot episodes, 512-d) on features that all point almost
    one way, as a collapsed backbone's (mean cosine 0.9995): the episodes are fitted together
    and each must still be scikit-learn's fit. Before the fix the shared first L-BFGS step
    shrank with the number of episodes below float32's resolution of J: every episode stopped
    at W = 0 and scored exactly chance (0.2; 0.73 with 50 episodes)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 90)
    common, centres = rng.standard_normal(512), rng.standard_normal((10, 512))
    noise = rng.standard_normal((len(y), 512))
    x = (common + 0.01 * (centres[y] + 2 * noise)).astype(np.float32)
    result = few_shot(x, y, ways=5, shots=5, episodes=600, queries=15, seed=0)
    # fitted 50 or 600 at a time, the same episodes score the same; within one query of 75, as
    # the joint L-BFGS path (so a borderline query) depends on the batch (before: 0.2 vs 0.73)
    alone = few_shot(x, y, episodes=50, seed=0).accuracies
    assert np.abs(result.accuracies[:50] - alone).max() <= 1 / 75 + 1e-9
    rng = np.random.default_rng(0)  # the draw few_shot makes: classes, then items of each
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    for accuracy in result.accuracies[:20]:
        rows = [
            rng.choice(np.flatnonzero(y == c), 20, replace=False)
            for c in rng.choice(10, 5, replace=False)
        ]
        support = np.concatenate([r[:5] for r in rows])
        query = np.concatenate([r[5:] for r in rows])
        model = LogisticRegression(C=1.0, max_iter=1000).fit(
            normalised[support], np.repeat(np.arange(5), 5)
        )
        expected = np.mean(model.predict(normalised[query]) == np.repeat(np.arange(5), 15))
        assert accuracy == pytest.approx(expected, abs=1 / 75 + 1e-9)  # one query of 75 at most


def test_few_shot_needs_enough_classes():
    x, y = blobs(60, num_classes=3)
    with pytest.raises(EvalError, match="need 5 classes"):
        few_shot(x, y, ways=5)
    with pytest.raises(EvalError, match="episodes >= 2"):
        few_shot(x, y, ways=2, episodes=1)
