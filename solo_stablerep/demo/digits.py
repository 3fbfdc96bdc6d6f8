"""The real images the demo probes on, and the probes: scikit-learn's handwritten digits, each at
its own random size and place in the frame, read by :mod:`solo_stablerep.eval.probes`.

The images are ``sklearn.datasets.load_digits`` (1,797 8×8 grey scans of digits written by 43
people, shipped inside scikit-learn, so nothing is downloaded), split in halves per class. The
scans are centred and size-normalised: their raw pixels already classify them (kNN 0.967) and so
does a randomly initialised network (about 0.92), which leaves no room for what training teaches.
So each scan is upsampled to its own random size, between :data:`MIN_DIGIT_FRACTION` of the frame
and all of it, and pasted at a random place of a black frame (one draw per image with a fixed
seed: the same images for every backbone). A backbone must then tell the digit wherever it is and
however large, which is what the training crops teach every method. Pixels go to 3 channels,
normalised with the ImageNet mean/std that solo-learn applies to synthetic (and custom) data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# solo-learn's default normalisation for every dataset it has no statistics for (synthetic included)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the smallest digit, as a fraction of the frame's side (20 px of 32): measured on the design seed,
# a random network's kNN falls from 0.92 (centred scans) to 0.65, raw pixels' from 0.97 to 0.79
MIN_DIGIT_FRACTION = 0.625
FEW_SHOT_WAYS, FEW_SHOTS = 5, 5
# (result key of evaluate_backbone, short name) of each probe accuracy, in table order
ACCURACIES = (("knn_acc", "kNN"), ("linear_acc", "linear"), ("few_shot_acc", f"{FEW_SHOTS}-shot"))
PROBES_TEXT = (
    "sklearn.datasets.load_digits, each scan at a random size (62.5-100 % of the frame) and place, "
    "stratified 50/50 split; solo_stablerep.eval.probes: weighted kNN (k 20, T 0.07), the linear-"
    "transfer protocol (45 weight decays, 20 % of train held out), "
    f"{FEW_SHOT_WAYS}-way {FEW_SHOTS}-shot episodes on the test half (600, 15 queries)"
)


@dataclass
class ProbeData:
    """A labelled train/test split of real images, ready for the backbone (N, 3, S, S)."""

    train_images: torch.Tensor
    train_labels: np.ndarray
    test_images: torch.Tensor
    test_labels: np.ndarray


def place_digits(
    scans: torch.Tensor, image_size: int, min_fraction: float, seed: int
) -> torch.Tensor:
    """(N, 1, 8, 8) scans in [0, 1] -> (N, 1, S, S) frames, each scan upsampled (bilinear) to a
    random side in [``min_fraction`` S, S] and pasted at a random place on black."""

    rng = np.random.default_rng(seed)
    frames = torch.zeros(len(scans), 1, image_size, image_size)
    smallest = max(1, round(min_fraction * image_size))
    for i, scan in enumerate(scans):
        side = int(rng.integers(smallest, image_size + 1))
        x, y = rng.integers(0, image_size - side + 1, size=2)
        digit = F.interpolate(scan[None], size=(side, side), mode="bilinear", align_corners=False)[
            0
        ]
        frames[i, :, y : y + side, x : x + side] = digit.clamp(0, 1)
    return frames


def load_real_digits(
    image_size: int, min_fraction: float = MIN_DIGIT_FRACTION, seed: int = 0
) -> ProbeData:
    """scikit-learn's handwritten digits at random sizes and places (:func:`place_digits`), split in
    halves per class, as normalised 3-channel tensors."""

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    scans = (
        torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    )  # ink counts 0..16
    pixels = place_digits(scans, image_size, min_fraction, seed).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = ((pixels - mean) / std).contiguous()
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.5, random_state=seed, stratify=digits.target
    )
    return ProbeData(
        images[train_idx], digits.target[train_idx], images[test_idx], digits.target[test_idx]
    )


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """Pooled backbone features in eval mode (BatchNorm uses its running statistics)."""

    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters(), torch.empty(0)).device
    features = [
        backbone(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    backbone.train(was_training)
    return torch.cat(features).numpy()


def evaluate_backbone(backbone: torch.nn.Module, data: ProbeData) -> dict:
    """kNN, linear-probe and few-shot test accuracies (fractions in [0, 1]) of a frozen backbone,
    under the keys of :data:`ACCURACIES`, by the protocols of :mod:`solo_stablerep.eval.probes`."""

    from solo_stablerep.eval.probes import few_shot, knn_accuracy, linear_probe

    train_x = extract_features(backbone, data.train_images)
    test_x = extract_features(backbone, data.test_images)
    return {
        "knn_acc": knn_accuracy(train_x, data.train_labels, test_x, data.test_labels),
        "linear_acc": linear_probe(
            train_x, data.train_labels, test_x, data.test_labels, device="cpu"
        ).score,
        "few_shot_acc": few_shot(
            test_x, data.test_labels, ways=FEW_SHOT_WAYS, shots=FEW_SHOTS, device="cpu"
        ).mean,
    }
