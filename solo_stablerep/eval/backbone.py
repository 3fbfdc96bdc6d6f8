"""A solo-learn checkpoint's backbone, rebuilt as solo-learn's ``main_linear.py`` rebuilds it.

A model to evaluate is named by a *spec*:

- ``PATH.ckpt``: a checkpoint written by solo-learn's ``Checkpointer`` (any method: ours, or
  solo-learn's ``simclr``, ``byol``, ``supcon``, ...). Its architecture is read from the
  ``args.json`` that the ``Checkpointer`` saves beside it (``backbone.name``, ``backbone.kwargs``,
  ``method``, ``data.dataset``), the way ``main_linear.py`` is told it: the backbone constructor of
  ``BaseMethod._BACKBONES``; for ResNets, no ``fc``, and the CIFAR stem (3×3 ``conv1``, no
  max-pool) when pretrained on CIFAR; weights from the ``state_dict`` entries under
  ``backbone.``. The file is opened with ``torch.load(weights_only=True)``: a checkpoint from
  elsewhere cannot run code.
- ``random:<backbone>``: the same architecture with its initial weights (seed 0): the floor every
  table shows.

Its images are normalised with the mean/std it was pretrained with (solo-learn's per-data-set
values, else the config's ``augmentations[0].mean/std``, else ImageNet's).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from solo_stablerep.errors import EvalError, first_line
from solo_stablerep.storage import file_sha256

RANDOM_PREFIX = "random:"
RANDOM_SEED = 0
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# solo-learn's pretraining normalisation per data set (solo/data/pretrain_dataloader.py)
PRETRAIN_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
}


@dataclass
class BackboneSpec:
    """What a spec names, read without building anything: enough to key the feature cache."""

    spec: str
    label: str  # the row name in the tables
    backbone_name: str
    backbone_kwargs: dict
    method: str | None
    pretrain_dataset: str | None
    crop_size: int | None  # the pretraining crop size (None for random)
    mean: tuple = IMAGENET_MEAN_STD[0]
    std: tuple = IMAGENET_MEAN_STD[1]
    checkpoint: Path | None = None
    identity: dict = field(default_factory=dict)  # what makes its features what they are

    @property
    def cifar_stem(self) -> bool:
        return self.backbone_name.startswith("resnet") and self.pretrain_dataset in (
            "cifar10",
            "cifar100",
        )


def read_spec(spec: str) -> BackboneSpec:
    """Parses ``spec`` (module docstring) and reads the checkpoint's ``args.json``; one-line
    :class:`EvalError` for anything that cannot name a rebuildable backbone."""
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX) :]
        _check_backbone_name(name, spec)
        identity = {"random": name, "seed": RANDOM_SEED, "torch": torch.__version__}
        return BackboneSpec(spec, spec, name, {}, None, None, None, identity=identity)

    path = Path(spec)
    if not path.is_file():
        raise EvalError(f"{spec}: no such checkpoint file (or use random:<backbone>)")
    args_path = path.parent / "args.json"
    if not args_path.is_file():
        raise EvalError(
            f"{spec}: no args.json beside it: evaluate a checkpoint in the folder solo-learn's "
            "Checkpointer wrote (checkpoint.enabled=True), which holds its config"
        )
    try:
        args = json.loads(args_path.read_text(encoding="utf-8"))
        name = args["backbone"]["name"]
        kwargs = dict(args["backbone"].get("kwargs") or {})
        method = args.get("method")
        dataset = (args.get("data") or {}).get("dataset")
        augmentations = args.get("augmentations") or [{}]
        crop_size = augmentations[0].get("crop_size")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise EvalError(
            f"{args_path}: not a solo-learn config ({error!r} missing or malformed)"
        ) from error
    _check_backbone_name(name, spec)
    mean, std = PRETRAIN_MEAN_STD.get(
        dataset,
        (
            augmentations[0].get("mean", IMAGENET_MEAN_STD[0]),
            augmentations[0].get("std", IMAGENET_MEAN_STD[1]),
        ),
    )
    label = args.get("name") or path.stem
    identity = {
        "checkpoint_sha256": file_sha256(path),
        "backbone": name,
        "kwargs": kwargs,
        "method": method,
        "dataset": dataset,
    }
    return BackboneSpec(
        spec,
        label,
        name,
        kwargs,
        method,
        dataset,
        crop_size,
        tuple(mean),
        tuple(std),
        path,
        identity,
    )


def _backbones() -> dict:
    """solo-learn's backbone constructors, by name."""
    from solo_stablerep._solo import _quiet_imports, check_solo_learn

    check_solo_learn()
    with _quiet_imports():
        from solo.methods.base import BaseMethod
    return BaseMethod._BACKBONES


def _check_backbone_name(name: str, spec: str) -> None:
    known = _backbones()
    if name not in known:
        raise EvalError(f"{spec}: unknown backbone {name!r}; solo-learn's are {', '.join(known)}")


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The backbone of ``spec`` in eval mode, on the CPU, with its checkpoint's weights (every
    backbone parameter and buffer must be in the checkpoint)."""
    constructor = _backbones()[spec.backbone_name]
    with warnings.catch_warnings():  # solo-learn warns about custom backbones it has none for
        warnings.simplefilter("ignore")
        if spec.checkpoint is None:
            torch.manual_seed(RANDOM_SEED)
        backbone = constructor(spec.method, **spec.backbone_kwargs)
    if spec.backbone_name.startswith("resnet"):
        backbone.fc = nn.Identity()
        if spec.cifar_stem:
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            backbone.maxpool = nn.Identity()
    if spec.checkpoint is not None:
        backbone.load_state_dict(backbone_state(spec), strict=True)
    return backbone.eval()


def backbone_state(spec: BackboneSpec) -> dict:
    """The checkpoint's backbone tensors, named as the backbone module names them."""
    try:
        checkpoint = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of many kinds: all mean "not a checkpoint"
        raise EvalError(
            f"{spec.spec}: not a checkpoint torch can read safely "
            f"({type(error).__name__}: {first_line(error)[:200]})"
        ) from error
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EvalError(
            f"{spec.spec}: no state_dict in it: not a solo-learn (Lightning) checkpoint"
        )
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise EvalError(f"{spec.spec}: its state_dict has no backbone.* weights")
    return weights


def load_backbone(spec: BackboneSpec) -> nn.Module:
    """:func:`build_backbone`, with a mismatch between checkpoint and architecture as one line."""
    try:
        return build_backbone(spec)
    except RuntimeError as error:
        first = str(error).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise EvalError(
            f"{spec.spec}: its backbone weights do not fit {spec.backbone_name} as args.json "
            f"describes it ({detail})"
        ) from error
