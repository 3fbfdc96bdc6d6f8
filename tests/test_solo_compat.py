"""The repairs of solo_stablerep/_solo_compat.py: each repaired solo-learn feature computes what
solo-learn's own code computes, through the entry point, for every method."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    FEATURE_METHODS,
    labelled_synthetic_data,
    requires_solo,
    tiny_synthetic_run_cfg,
)

from solo_stablerep.eval.probes import knn_accuracy

pytestmark = requires_solo

KNN_K = 3  # fewer than the training rows, so that the vote is over a strict subset
KNN_TEMPERATURE = 0.07  # WeightedKNNClassifier's default T; BaseMethod does not set it
BANKS = ("train_features", "train_targets", "test_features", "test_targets")  # its states


def weighted_knn_top1(train, train_labels, test, test_labels, k, temperature, distance="cosine"):
    """The weighted kNN rule, by hand: per test row, the k nearest training rows vote for their
    class, with weight exp(cosine / temperature) (cosine) or 1 / (distance + 1e-5) (euclidean);
    percent of rows whose top class is right."""
    train, test = train.double(), test.double()
    if distance == "cosine":
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    hits = 0
    for row, label in zip(test, test_labels.tolist(), strict=True):
        if distance == "cosine":
            similarities, neighbours = (train @ row).topk(k)
            weights = [math.exp(s / temperature) for s in similarities.tolist()]
        else:
            distances, neighbours = (train - row).norm(dim=1).topk(k, largest=False)
            weights = [1 / (d + 1e-5) for d in distances.tolist()]
        votes = {}
        for weight, neighbour in zip(weights, neighbours.tolist(), strict=True):
            voted = int(train_labels[neighbour])
            votes[voted] = votes.get(voted, 0.0) + weight
        hits += max(votes, key=votes.get) == label
    return 100.0 * hits / len(test)


def blobs(num_rows, seed, num_classes=5, dim=16):
    """Overlapping Gaussian classes: a kNN accuracy strictly between 0 and 100."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, num_classes, (num_rows,), generator=generator)
    return centres[labels] + 1.5 * torch.randn(num_rows, dim, generator=generator), labels


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_repaired_knn_classifier_computes_the_weighted_knn_rule(distance):
    """solo-learn's classifier, built and fed as ``BaseMethod`` does (forward per batch), now
    constructs and gives the rule computed by hand, and for cosine ``solo-stablerep-eval``'s kNN."""
    from solo.utils.knn import WeightedKNNClassifier

    train, train_y = blobs(120, seed=1)
    test, test_y = blobs(60, seed=2)
    knn = WeightedKNNClassifier(k=7, distance_fx=distance)
    for rows in range(0, 120, 32):  # a few training batches, then validation batches
        knn(train_features=train[rows : rows + 32], train_targets=train_y[rows : rows + 32])
    for rows in range(0, 60, 32):
        knn(test_features=test[rows : rows + 32], test_targets=test_y[rows : rows + 32])
    top1, _ = knn.compute()

    by_hand = weighted_knn_top1(train, train_y, test, test_y, 7, KNN_TEMPERATURE, distance)
    assert 0 < by_hand < 100  # the vote matters
    assert top1 == pytest.approx(by_hand, abs=1e-9)
    if distance == "cosine":
        ours = knn_accuracy(train, train_y, test, test_y, k=7, temperature=KNN_TEMPERATURE)
        assert top1 == pytest.approx(100 * ours, abs=1e-9)


def test_forward_only_fills_the_memory_banks(monkeypatch):
    """``compute_on_step=False`` as solo-learn asks for it: ``forward`` returns None and appends
    the batch, without computing on it (torchmetrics 1.x's own ``forward`` would copy the whole
    bank and compute at every step)."""
    from solo.utils.knn import WeightedKNNClassifier

    computed = []
    solo_compute = WeightedKNNClassifier.compute
    monkeypatch.setattr(
        WeightedKNNClassifier, "compute", lambda knn: computed.append(1) or solo_compute(knn)
    )
    knn = WeightedKNNClassifier(k=3)
    train, train_y = blobs(12, seed=3)
    batches = [
        knn(train_features=train[i : i + 4], train_targets=train_y[i : i + 4]) for i in (0, 4, 8)
    ]
    assert batches == [None] * 3 and not computed
    assert [len(b) for b in knn.train_features] == [4, 4, 4]
    assert torch.equal(torch.cat(knn.train_features), train)


@pytest.fixture(autouse=True)
def repaired():
    """The repairs are applied where our methods join solo-learn's registry."""
    from solo_stablerep import register_methods

    register_methods()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_synthetic_data(tmp_path_factory.mktemp("labelled"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, grouping",
    [(method, []) for method in FEATURE_METHODS]
    # both views in one backbone call: the bank still gets each view's features
    + [("stablerep", ["++method_kwargs.views_per_backbone_call=2"])],
)
def test_online_knn_is_solo_learns_weighted_knn_on_the_features_it_saw(
    method, grouping, labelled, tmp_path, monkeypatch
):
    """``+knn_eval.enabled=True`` through the entry point: the logged ``val_knn_acc1`` is
    solo-learn's ``WeightedKNNClassifier.compute`` on memory banks holding the training steps'
    labelled backbone features and the validation images' features; it equals the rule computed by
    hand and ``solo-stablerep-eval``'s kNN on the same features, and is computed once per
    validation epoch (the repaired ``compute_on_step=False``), not at every step."""
    from solo.utils.knn import WeightedKNNClassifier

    from solo_stablerep.pretrain import run_pretrain

    banks = []
    solo_compute = WeightedKNNClassifier.compute

    def record_banks(knn):
        banks.append({name: torch.cat(getattr(knn, name)) for name in BANKS})
        return solo_compute(knn)

    monkeypatch.setattr(WeightedKNNClassifier, "compute", record_banks)
    monkeypatch.chdir(tmp_path)
    data, val = labelled
    cfg = tiny_synthetic_run_cfg(
        method,
        data,
        val,
        tmp_path,
        "+knn_eval.enabled=True",
        f"+knn_eval.k={KNN_K}",
        "+knn_eval.distance_func=cosine",
        "+num_sanity_val_steps=0",
        *grouping,
    )
    trainer = run_pretrain(cfg)
    assert trainer.global_step == 2

    assert len(banks) == 1  # one validation epoch
    train, train_y, test, test_y = (banks[0][name] for name in BANKS)
    model = trainer.lightning_module
    num_large_crops = model.num_large_crops
    assert train.shape == (2 * 4 * num_large_crops, model.features_dim)  # 2 steps x 4 captions
    assert set(train_y.tolist()) <= set(range(4))
    # the test bank is the validation images' backbone features, in the loader's order
    model.eval()
    with torch.no_grad():
        images, labels = zip(*trainer.val_dataloaders, strict=True)
        features = model(torch.cat(images))["feats"]
    assert torch.equal(test_y, torch.cat(labels))
    torch.testing.assert_close(test, features, rtol=1e-4, atol=1e-5)

    assert 0 <= trainer.callback_metrics["val_acc1"] <= 100  # the online linear classifier too
    logged = trainer.callback_metrics["val_knn_acc1"].item()
    by_hand = weighted_knn_top1(train, train_y, test, test_y, KNN_K, KNN_TEMPERATURE)
    ours = knn_accuracy(train, train_y, test, test_y, k=KNN_K, temperature=KNN_TEMPERATURE)
    assert logged == pytest.approx(by_hand, abs=1e-4)
    assert logged == pytest.approx(100 * ours, abs=1e-4)
