"""Frozen-backbone evaluation on real images: feature extraction, a kNN, a linear and a few-shot probe.

The real images are scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797
8×8 grey scans of digits written by 43 people, shipped inside scikit-learn, so nothing is
downloaded). They are upsampled to the training crop size, copied to 3 channels and normalised with
the ImageNet mean/std that solo-learn's pipelines apply to synthetic (and custom) data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# solo-learn's default normalisation for every dataset it has no statistics for (synthetic included)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEW_SHOTS = 5  # labelled real images per digit for the few-shot probe
# (result key of evaluate_backbone, short name) of each probe accuracy, in table order
ACCURACIES = (("knn_acc", "kNN"), ("linear_acc", "linear"), ("few_shot_acc", f"{FEW_SHOTS}-shot"))


@dataclass
class ProbeData:
    """A labelled train/test split of real images, ready for the backbone (N, 3, S, S)."""

    train_images: torch.Tensor
    train_labels: np.ndarray
    test_images: torch.Tensor
    test_labels: np.ndarray


def load_real_digits(image_size: int, test_fraction: float = 0.5, seed: int = 0) -> ProbeData:
    """scikit-learn's handwritten digits, split per class, as normalised 3-channel tensors."""

    digits = load_digits()
    # pixel values are ink counts 0..16 (light ink on a dark ground)
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixels = pixels.clamp(0, 1).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = ((pixels - mean) / std).contiguous()
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return ProbeData(images[train_idx], digits.target[train_idx], images[test_idx], digits.target[test_idx])


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Pooled backbone features in eval mode (BatchNorm uses its running statistics)."""

    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    features = [backbone(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    backbone.train(was_training)
    return torch.cat(features).numpy()


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20) -> float:
    """Distance-weighted k-nearest-neighbour vote with cosine distance (solo-learn's online kNN style)."""

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine", weights="distance")
    return float(knn.fit(train_x, train_y).score(test_x, test_y))


def linear_probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Logistic regression on standardised features (the frozen-feature linear probe)."""

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return float(probe.fit(train_x, train_y).score(test_x, test_y))


def few_shot_accuracy(train_x, train_y, test_x, test_y, shots: int = 5, draws: int = 10, seed: int = 0) -> float:
    """Linear probe fitted on ``shots`` labelled images per class, tested on the whole test split; the mean
    over ``draws`` random draws of those images (the same draws for every backbone, given ``seed``).

    With all 900 labels, a random network's features (about as good as raw pixels on these digits)
    leave little room above them; with a few labels per class, what the features group together matters.
    """

    rng = np.random.default_rng(seed)
    classes = np.unique(train_y)
    accuracies = []
    for _ in range(draws):
        chosen = np.concatenate([rng.choice(np.flatnonzero(train_y == c), shots, replace=False) for c in classes])
        accuracies.append(linear_probe_accuracy(train_x[chosen], train_y[chosen], test_x, test_y, seed))
    return float(np.mean(accuracies))


def evaluate_backbone(backbone: torch.nn.Module, data: ProbeData, knn_k: int = 20, shots: int = FEW_SHOTS) -> dict:
    """kNN, linear-probe and ``shots``-shot linear-probe test accuracies (fractions in [0, 1]) of a
    frozen backbone, under the keys of :data:`ACCURACIES`."""

    train_x = extract_features(backbone, data.train_images)
    test_x = extract_features(backbone, data.test_images)
    return {
        "knn_acc": knn_accuracy(train_x, data.train_labels, test_x, data.test_labels, knn_k),
        "linear_acc": linear_probe_accuracy(train_x, data.train_labels, test_x, data.test_labels),
        "few_shot_acc": few_shot_accuracy(train_x, data.train_labels, test_x, data.test_labels, shots),
    }
