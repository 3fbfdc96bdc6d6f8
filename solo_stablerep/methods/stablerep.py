from collections.abc import Callable, Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
import torch.nn.functional as F
from solo.methods.base import BaseMethod
from solo.utils.metrics import accuracy_at_k

from solo_stablerep.cfg_defaults import fill_defaults
from solo_stablerep.errors import InputError
from solo_stablerep.losses import multi_positive_contrastive_loss
from solo_stablerep.methods.health import embedding_std
from solo_stablerep.methods.needs import EntryPointNeeds

# BaseMethod logs these for every batch; without labels they would be a meaningless 0 %.
_CLASSIFIER_METRICS = ("train_class_loss", "train_acc1", "train_acc5")


def build_projector(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """MLP of ``num_layers`` linear layers with BN + ReLU between them (StableRep: 3 layers).

    BN statistics are per view because solo-learn's BaseMethod forwards each view separately.
    """

    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        is_last = i == num_layers - 1
        # no bias before a BN: it would be cancelled by the BN's mean subtraction
        layers.append(nn.Linear(d_in, d_out, bias=is_last))
        if not is_last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def check_projector_kwargs(cfg: omegaconf.DictConfig) -> None:
    kwargs = cfg.method_kwargs
    if not kwargs.temperature > 0:
        raise InputError(f"method_kwargs.temperature must be > 0, got {kwargs.temperature}")
    for key in ("proj_hidden_dim", "proj_output_dim", "proj_num_layers"):
        if not (isinstance(kwargs[key], int) and kwargs[key] >= 1):
            raise InputError(f"method_kwargs.{key} must be an integer >= 1, got {kwargs[key]}")


def check_views_per_backbone_call(cfg: omegaconf.DictConfig) -> None:
    group = cfg.method_kwargs.views_per_backbone_call
    large, small = cfg.data.num_large_crops, cfg.data.num_small_crops
    if not (isinstance(group, int) and group >= 1 and large % group == 0 and small % group == 0):
        raise InputError(
            "method_kwargs.views_per_backbone_call must be an integer >= 1 that divides both the "
            f"{large} large crops and the {small} small crops, got {group}"
        )
    if group == 1:
        return
    if cfg.knn_eval.enabled:
        raise InputError(
            "method_kwargs.views_per_backbone_call > 1 does not feed knn_eval (solo-learn's "
            "per-view step does): set it to 1 or knn_eval.enabled=False"
        )
    # a call concatenates views, so its views must share one crop size
    augmentations = cfg.get("augmentations") or []
    large_size = augmentations[0].crop_size if augmentations else None  # solo-learn's rule
    small_sizes = sorted(
        {a.crop_size for a in augmentations if a.num_crops and a.crop_size != large_size}
    )
    if len(small_sizes) > 1:
        raise InputError(
            f"method_kwargs.views_per_backbone_call > 1 needs one small crop size, got "
            f"{small_sizes}: set it to 1"
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


def require_views(cfg: omegaconf.DictConfig, minimum: int) -> None:
    num_views = cfg.data.num_large_crops + cfg.data.num_small_crops
    if num_views < minimum:
        raise InputError(
            f"{cfg.method} needs at least {minimum} views per item to have positives, "
            f"got {num_views} "
            "(data.num_large_crops + data.num_small_crops): raise augmentations[*].num_crops "
            "or data.synthetic.n_img"
        )


class StableRep(EntryPointNeeds, BaseMethod):
    # the loss takes any number of views per item (see EntryPointNeeds)
    any_number_of_large_crops = True
    KWARGS_DEFAULTS = {
        "proj_hidden_dim": 4096,
        "proj_output_dim": 256,
        "proj_num_layers": 3,
        "temperature": 0.1,
        "views_per_backbone_call": 1,
    }

    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements StableRep (Tian, Fan, Isola, Chang, Krishnan, "StableRep: Synthetic Images
        from Text-to-Image Models Make Strong Visual Representation Learners", NeurIPS 2023,
        https://arxiv.org/abs/2306.00984).

        Every view of one dataset item (one caption: crops of several images generated from
        it) is a positive of every other; the loss is the multi-positive contrastive loss
        (:func:`solo_stablerep.losses.multi_positive_contrastive_loss`). Any number of large
        views (the paper uses 6) and of small multicrop views can be used.

        This class is also the shared part of StableRep++ (:class:`StableRepPP`): the
        projector, the online classifier step that stays finite without labels, the metric
        filtering and the ``method_kwargs`` checks. A subclass adds its own loss through
        :meth:`contrastive_loss` and may weight (or drop) the image–image term through
        :meth:`image_image_weight`.

        Extra cfg settings:
            method_kwargs:
                proj_hidden_dim (int): hidden width of the projector. Defaults to 4096.
                proj_output_dim (int): dimension of the projected embeddings. Defaults to 256.
                proj_num_layers (int): linear layers in the projector, with BN + ReLU between
                    them. Defaults to 3.
                temperature (float): softmax temperature tau of the loss. Defaults to 0.1.
                views_per_backbone_call (int): views forwarded together in one backbone call,
                large and small crops alike (a call holds views of one crop size); it must divide
                both the number of large and of small crops. solo-learn forwards each view on
                its own, which costs a call per view: with many views of few captions (small
                CPU runs) the calls' fixed cost dominates, and grouping views so that a call
                sees as many crops as SimCLR's halves the step. The heads (projector, and a
                subclass's) still see one view at a time (BN statistics per view, as the
                authors'). With a BN backbone the grouped views share BN statistics, and a BN
                batch then holds positives of each other; the paper's ViT has no BN, so there
                only the speed changes. Defaults to 1, solo-learn's per-view forward (every
                solo-learn method's BN statistics, and on a GPU a view of the paper's batch
                already fills a call). Not with ``knn_eval`` above 1.
        """

        super().__init__(cfg)

        kwargs = cfg.method_kwargs
        self.temperature: float = kwargs.temperature
        self.views_per_backbone_call: int = kwargs.views_per_backbone_call
        # the weight of the image–image loss ("w1" of StableRep++'s total)
        self.w1: float = self.image_image_weight(cfg)
        if self.w1 > 0:
            self.projector = build_projector(
                self.features_dim,
                kwargs.proj_hidden_dim,
                kwargs.proj_output_dim,
                kwargs.proj_num_layers,
            )
        else:
            # Nothing reads "z" without the image–image term: no projector to train (DDP
            # refuses parameters that get no gradient).
            self.projector = nn.Identity()
        # Decided once per run, so every DDP rank logs the same keys.
        self.logs_classifier_metrics: bool = not cfg.data.get("no_labels", False) and (
            cfg.data.num_classes > 1
        )

    @classmethod
    def image_image_weight(cls, cfg: omegaconf.DictConfig) -> float:
        """Weight of the image–image (multi-positive) loss in the total; 0 drops it and the
        projector. StableRep: 1. Read from the cfg before the model exists (view checks).

        A model keeps the value of its cfg as ``self.w1``.
        """

        return 1.0

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config: every key of the class's
        ``KWARGS_DEFAULTS`` (a subclass's include StableRep's), the projector's, and enough
        views for the image–image term to have positives.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super().add_and_assert_specific_cfg(cfg)
        fill_defaults(cfg, "method_kwargs", cls.KWARGS_DEFAULTS, owner=f" for method {cfg.method}")
        check_projector_kwargs(cfg)
        check_views_per_backbone_call(cfg)
        require_views(cfg, 2 if cls.image_image_weight(cfg) > 0 else 1)
        return cfg

    @property
    def learnable_params(self) -> list[dict]:
        """Adds projector parameters (if there is an image–image term) to the parent's
        learnable parameters.

        Returns:
            List[dict]: list of learnable parameters.
        """

        if self.w1 == 0:
            return super().learnable_params
        extra_learnable_params = [{"name": "projector", "params": self.projector.parameters()}]
        return super().learnable_params + extra_learnable_params

    def heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """Adds one view's projection "z" to its backbone outputs (a subclass adds its heads'
        outputs): the heads run per view, whatever the backbone calls were."""

        out["z"] = self.projector(out["feats"])
        return out

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Performs the forward pass of the backbone and the heads.

        Args:
            X (torch.Tensor): a batch of images in the tensor format.

        Returns:
            Dict[str, Any]: the outputs of the parent and the projected features "z".
        """

        return self.heads(super().forward(X))

    def multicrop_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Performs the forward pass for the small multicrop views.

        Args:
            X (torch.Tensor): batch of images in tensor format.

        Returns:
            Dict[str, Any]: the outputs of the parent and the projected features "z".
        """

        return self.heads(super().multicrop_forward(X))

    def large_views_forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One backbone call over large views concatenated, and the online classifier: per
        image "feats" and "logits" (a subclass may add outputs with a row per image)."""

        return super().forward(concat(views))

    def small_views_forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One backbone call over small (multicrop) views concatenated: per image "feats"."""

        return super().multicrop_forward(concat(views))

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Online classifier step that stays finite on unlabelled data.

        solo-learn's version takes ``F.cross_entropy(..., ignore_index=-1)``, which is NaN
        when every target of the batch is -1 (caption data without classes). Here the loss
        and accuracies are computed over the labelled rows only, and are 0 without any.
        """

        return self.classifier_outputs(self.heads(self.large_views_forward([X])), targets)

    def classifier_outputs(self, out: dict[str, Any], targets: torch.Tensor) -> dict[str, Any]:
        """Adds the online classifier's "loss", "acc1" and "acc5" to a view's forward outputs
        (see :meth:`base_training_step`); a subclass with another forward reuses it."""

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

    def contrastive_loss(self, batch: Sequence[Any], out: dict[str, Any]) -> torch.Tensor:
        """The method's loss, added to the online classifier's by :meth:`training_step`.

        StableRep: ``w1 *`` the multi-positive loss over every view of the batch (logged as
        ``train_stablerep_loss``); a zero when ``w1`` is 0. A subclass adds its terms to this.
        Logs the collapse signal of the projections ``z`` as ``train_embedding_std``
        (:func:`solo_stablerep.methods.health.embedding_std`).

        Args:
            batch (Sequence[Any]): the training batch, ``[indexes, [X], Y, ...]``.
            out (Dict[str, Any]): solo-learn's step outputs: per view, "feats" and "z".

        Returns:
            torch.Tensor: scalar loss.
        """

        z = torch.cat(out["z"])
        self.log("train_embedding_std", embedding_std(z), on_epoch=True, sync_dist=True)
        if self.w1 == 0:
            return torch.zeros((), device=self.device)
        image_loss = multi_positive_contrastive_loss(
            z,
            self.view_labels(batch[0]),
            self.temperature,
            max_rows_per_rank=self.max_views_per_step,
        )
        self.log("train_stablerep_loss", image_loss, on_epoch=True, sync_dist=True)
        return self.w1 * image_loss

    def grouped_training_step(self, batch: Sequence[Any], batch_idx: int) -> dict[str, Any]:
        """solo-learn's ``BaseMethod.training_step`` (outputs, classifier metrics) with the views
        forwarded ``views_per_backbone_call`` at a time through the backbone (large crops, then
        small crops, each call one crop size; :func:`forward_in_groups`), then split back into
        views; the heads and the classifier's loss run once per view.
        """

        _, X, targets = batch
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
        return outs

    def step_outputs(self, batch: Sequence[Any], batch_idx: int) -> dict[str, Any]:
        """solo-learn's step outputs (per view "feats", "z", ...; the online classifier's
        "loss", "acc1", "acc5"): ``BaseMethod.training_step``, or :meth:`grouped_training_step`
        with ``views_per_backbone_call`` above 1. A subclass adds its own (SynCLR's teacher).
        """

        if self.views_per_backbone_call > 1:
            return self.grouped_training_step(batch, batch_idx)
        return BaseMethod.training_step(self, batch, batch_idx)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for StableRep: :meth:`step_outputs` (BaseMethod's training step, or
        :meth:`grouped_training_step` with ``views_per_backbone_call`` above 1) and the loss.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y], where
                [X] is a list of size num_crops containing batches of images; all views of
                one index are positives of each other. Items after these three (StableRep++'s
                caption tokens) are left to :meth:`contrastive_loss`.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: the method's loss plus the online classifier's loss.
        """

        out = self.step_outputs(batch[:3], batch_idx)
        return self.contrastive_loss(batch, out) + out["loss"]
