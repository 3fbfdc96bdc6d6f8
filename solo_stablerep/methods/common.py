"""What StableRep, StableRep++ and SynCLR share, written once: any number of views per item
forwarded ``views_per_backbone_call`` at a time, heads per view, an online classifier step that
stays finite on unlabelled data, and no classifier metrics for a run without labels."""

from collections.abc import Callable, Sequence
from typing import Any

import omegaconf
import torch
import torch.nn.functional as F
from solo.utils.metrics import accuracy_at_k

from solo_stablerep.cfg_defaults import Setting, apply_settings
from solo_stablerep.errors import InputError
from solo_stablerep.methods.needs import EntryPointNeeds
from solo_stablerep.rules import integer

# BaseMethod logs these for every batch; without labels they would be a meaningless 0 %.
_CLASSIFIER_METRICS = ("train_class_loss", "train_acc1", "train_acc5")

VIEWS_PER_BACKBONE_CALL = Setting(
    "views_per_backbone_call",
    1,
    integer(1),
    "views per backbone call, large and small crops alike; divides both counts (1: solo-learn's "
    "call per view)",
)


def check_views_per_backbone_call(cfg: omegaconf.DictConfig) -> None:
    """The group divides both crop counts, and a call's views share one crop size."""

    group = cfg.method_kwargs.views_per_backbone_call
    large, small = cfg.data.num_large_crops, cfg.data.num_small_crops
    if large % group or small % group:
        raise InputError(
            "method_kwargs.views_per_backbone_call must be an integer >= 1 that divides both the "
            f"{large} large crops and the {small} small crops, got {group}"
        )
    augmentations = cfg.get("augmentations") or []
    large_size = augmentations[0].crop_size if augmentations else None  # solo-learn's rule
    small_sizes = sorted(
        {a.crop_size for a in augmentations if a.num_crops and a.crop_size != large_size}
    )
    if group > 1 and len(small_sizes) > 1:
        raise InputError(
            f"method_kwargs.views_per_backbone_call > 1 needs one small crop size, got "
            f"{small_sizes}: set it to 1"
        )


def require_views(cfg: omegaconf.DictConfig, minimum: int) -> None:
    num_views = cfg.data.num_large_crops + cfg.data.num_small_crops
    if num_views < minimum:
        raise InputError(
            f"{cfg.method} needs at least {minimum} views per item to have positives, "
            f"got {num_views} "
            "(data.num_large_crops + data.num_small_crops): raise augmentations[*].num_crops "
            "or data.synthetic.n_img"
        )


def forward_in_groups(
    forward: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]],
    views: Sequence[torch.Tensor],
    group: int,
) -> list[dict[str, torch.Tensor]]:
    """Runs ``forward`` on ``views`` ``group`` at a time and splits its outputs back into one
    dict per view.

    Args:
        forward: takes the views of one call and returns tensors with one row per image of
            their concatenation (in view order).
        views (Sequence[torch.Tensor]): views of the same size (a multiple of ``group``).
        group (int): views per call.

    Returns:
        List[Dict[str, torch.Tensor]]: per view, the rows of each output that are its own.
    """

    outs = []
    for start in range(0, len(views), group):
        some = list(views[start : start + group])
        sizes = [len(view) for view in some]
        split = {key: value.split(sizes) for key, value in forward(some).items()}
        outs += [{key: parts[i] for key, parts in split.items()} for i in range(len(some))]
    return outs


def concat(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The views along the batch dimension (a single view as it is, without a copy)."""

    return views[0] if len(views) == 1 else torch.cat(list(views))


class MultiViewMethod(EntryPointNeeds):
    """Mixin placed before solo-learn's ``BaseMethod`` (or ``BaseMomentumMethod``) by a method
    whose loss takes any number of views per item.

    A method declares its ``method_kwargs`` in ``SETTINGS`` (this mixin's, then its own; see
    :mod:`solo_stablerep.cfg_defaults`), adds its heads' outputs per view in :meth:`heads`, and
    gets its step's outputs from :meth:`multi_view_step`.

    Extra cfg settings:
        method_kwargs:
            views_per_backbone_call (int): views forwarded together in one backbone call, large
                and small crops alike (a call holds views of one crop size); it must divide both
                the number of large and of small crops. solo-learn forwards each view on its
                own, which costs a call per view: with many views of few captions (small CPU
                runs) the calls' fixed cost dominates, and grouping views so that a call sees as
                many crops as SimCLR's halves the step. The heads still see one view at a time
                (BN statistics per view, as the authors'). With a BN backbone the grouped views
                share BN statistics, and a BN batch then holds positives of each other; the
                paper's ViT has no BN, so there only the speed changes. Defaults to 1,
                solo-learn's per-view forward (on a GPU a view of the paper's batch already fills
                a call).
    """

    # the losses take any number of views per item (see EntryPointNeeds)
    any_number_of_large_crops = True
    SETTINGS: tuple[Setting, ...] = (VIEWS_PER_BACKBONE_CALL,)

    def __init__(self, cfg: omegaconf.DictConfig):
        super().__init__(cfg)
        self.views_per_backbone_call: int = cfg.method_kwargs.views_per_backbone_call
        # Decided once per run, so every DDP rank logs the same keys.
        self.logs_classifier_metrics: bool = not cfg.data.get("no_labels", False) and (
            cfg.data.num_classes > 1
        )

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """solo-learn's defaults, then the class's ``SETTINGS`` filled and checked (an unknown
        key, ``???`` or a bad value is a one-line error) and the views' grouping checked.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super().add_and_assert_specific_cfg(cfg)
        apply_settings(cfg, "method_kwargs", cls.SETTINGS, owner=f" for method {cfg.method}")
        check_views_per_backbone_call(cfg)
        return cfg

    def heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """Adds the method's heads' outputs to one view's backbone outputs."""

        raise NotImplementedError

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """solo-learn's forward ("feats", "logits") and the heads' outputs."""

        return self.heads(super().forward(X))

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """solo-learn's forward of small views ("feats") and the heads' outputs."""

        return self.heads(super().multicrop_forward(X))

    def large_views_forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One backbone call over large views concatenated, and the online classifier: per
        image "feats" and "logits" (a method may add outputs with a row per image)."""

        return super().forward(concat(views))

    def small_views_forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One backbone call over small (multicrop) views concatenated: per image "feats"."""

        return super().multicrop_forward(concat(views))

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's per-view classifier step, as :meth:`multi_view_step` takes it (finite
        on unlabelled data, see :meth:`classifier_outputs`)."""

        return self.classifier_outputs(self.heads(self.large_views_forward([X])), targets)

    def classifier_outputs(self, out: dict[str, Any], targets: torch.Tensor) -> dict[str, Any]:
        """Adds the online classifier's "loss", "acc1" and "acc5" to a view's outputs.

        solo-learn's takes ``F.cross_entropy(..., ignore_index=-1)``, which is NaN when every
        target of the batch is -1 (caption data without classes). Here the loss and accuracies
        are computed over the labelled rows only, and are 0 without any.
        """

        logits = out["logits"]
        labelled = targets != -1
        if labelled.any():
            loss = F.cross_entropy(logits[labelled], targets[labelled])
            top_k_max = min(5, logits.size(1))
            acc1, acc5 = accuracy_at_k(logits[labelled], targets[labelled], top_k=(1, top_k_max))
        else:
            # zero that keeps the classifier in the graph (DDP expects its gradients)
            loss = logits.sum() * 0.0
            acc1 = acc5 = torch.zeros((), device=logits.device)
        out.update({"loss": loss, "acc1": acc1, "acc5": acc5})
        return out

    def log_dict(self, dictionary, *args, **kwargs):
        if not self.logs_classifier_metrics:
            dictionary = {k: v for k, v in dictionary.items() if k not in _CLASSIFIER_METRICS}
        if dictionary:
            super().log_dict(dictionary, *args, **kwargs)

    def view_labels(self, indexes: torch.Tensor) -> torch.Tensor:
        """The item index of each row of ``torch.cat`` over the views of a step's outputs:
        views are concatenated view-major, so row ``v * B + i`` belongs to item ``i``."""

        return indexes.repeat(self.num_crops)

    @property
    def max_views_per_step(self) -> int:
        """Rows of a step's view outputs on one rank at most: the losses pad their all-gather to
        it, so no step waits for the device to learn how many rows each rank has."""

        return self.batch_size * self.num_crops

    def multi_view_step(self, batch: Sequence[Any]) -> dict[str, Any]:
        """What solo-learn's ``BaseMethod.training_step`` returns and logs (per view "feats" and
        the heads' outputs; the online classifier's "loss", "acc1", "acc5", averaged over the
        large views), with the views forwarded ``views_per_backbone_call`` at a
        time through the backbone (large crops, then small crops, each call one crop size;
        :func:`forward_in_groups`) and split back; the heads and the classifier run per view.

        Args:
            batch (Sequence[Any]): ``[indexes, [X], Y, ...]``, [X] a list of num_crops batches of
                images.

        Returns:
            Dict[str, Any]: per view outputs (lists) and the classifier's loss and accuracies.
        """

        _, X, targets = batch[:3]
        group = self.views_per_backbone_call
        large = forward_in_groups(self.large_views_forward, X[: self.num_large_crops], group)
        outs = [self.classifier_outputs(self.heads(view), targets) for view in large]
        outs = {k: [out[k] for out in outs] for k in outs[0]}
        small = forward_in_groups(self.small_views_forward, X[self.num_large_crops :], group)
        for view in small:
            for key, value in self.heads(view).items():
                outs[key].append(value)
        for key in ("loss", "acc1", "acc5"):
            outs[key] = sum(outs[key]) / self.num_large_crops
        metrics = {
            "train_class_loss": outs["loss"],
            "train_acc1": outs["acc1"],
            "train_acc5": outs["acc5"],
        }
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        if self.knn_eval:  # solo-learn's online kNN bank: the large views' labelled features
            targets = targets.repeat(self.num_large_crops)
            labelled = targets != -1
            train_features = torch.cat(outs["feats"][: self.num_large_crops])[labelled]
            self.knn(train_features=train_features.detach(), train_targets=targets[labelled])
        return outs
