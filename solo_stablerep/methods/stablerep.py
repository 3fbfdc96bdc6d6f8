from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
from solo.methods.base import BaseMethod

from solo_stablerep.cfg_defaults import Setting
from solo_stablerep.losses import multi_positive_contrastive_loss
from solo_stablerep.methods.common import MultiViewMethod, require_views
from solo_stablerep.methods.health import embedding_std
from solo_stablerep.rules import greater_than, integer

PROJECTOR_SETTINGS = (
    Setting("proj_hidden_dim", 4096, integer(1), "hidden width of the projector"),
    Setting("proj_output_dim", 256, integer(1), "embedding dimension of the loss"),
    Setting(
        "proj_num_layers",
        3,
        integer(1),
        "Linear layers, BN + ReLU between them; BN statistics per view (use "
        "`sync_batchnorm: True` under DDP)",
    ),
)


def build_projector(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """MLP of ``num_layers`` linear layers with BN + ReLU between them (StableRep: 3 layers).

    BN statistics are per view because the heads run on one view at a time.
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


def projector_of(kwargs: omegaconf.DictConfig, in_dim: int, build=build_projector) -> nn.Sequential:
    """The projector of ``method_kwargs``' ``proj_*`` settings (``build``: StableRep's)."""

    return build(in_dim, kwargs.proj_hidden_dim, kwargs.proj_output_dim, kwargs.proj_num_layers)


def stablerep_loss(method: MultiViewMethod, indexes: torch.Tensor, z: list[torch.Tensor]):
    """StableRep's multi-positive loss over a step's projected views ``z`` (every view of an item
    a positive of every other), logged as ``train_stablerep_loss``."""

    loss = multi_positive_contrastive_loss(
        torch.cat(z),
        method.view_labels(indexes),
        method.temperature,
        max_rows_per_rank=method.max_views_per_step,
    )
    method.log("train_stablerep_loss", loss, on_epoch=True, sync_dist=True)
    return loss


class StableRep(MultiViewMethod, BaseMethod):
    SETTINGS = (
        *PROJECTOR_SETTINGS,
        Setting("temperature", 0.1, greater_than(0), "τ of the loss"),
        *MultiViewMethod.SETTINGS,
    )

    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements StableRep (Tian, Fan, Isola, Chang, Krishnan, "StableRep: Synthetic Images
        from Text-to-Image Models Make Strong Visual Representation Learners", NeurIPS 2023,
        https://arxiv.org/abs/2306.00984).

        Every view of one dataset item (one caption: crops of several images generated from
        it) is a positive of every other; the loss is the multi-positive contrastive loss
        (:func:`solo_stablerep.losses.multi_positive_contrastive_loss`) of the projected views.
        Any number of large views (the paper uses 6) and of small multicrop views can be used.

        Extra cfg settings:
            method_kwargs: ``proj_hidden_dim``, ``proj_output_dim``, ``proj_num_layers`` (the
                projector), ``temperature`` (tau of the loss) and ``views_per_backbone_call``
                (:class:`~solo_stablerep.methods.common.MultiViewMethod`); their types, defaults
                and meanings are the table ``SETTINGS`` (the README's table).
        """

        super().__init__(cfg)
        self.temperature: float = cfg.method_kwargs.temperature
        self.projector = projector_of(cfg.method_kwargs, self.features_dim)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config: ``SETTINGS``, and enough
        views for the loss to have positives.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super().add_and_assert_specific_cfg(cfg)
        require_views(cfg, 2)
        return cfg

    @property
    def learnable_params(self) -> list[dict]:
        """Adds projector parameters to the parent's learnable parameters.

        Returns:
            List[dict]: list of learnable parameters.
        """

        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()}
        ]

    def heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """Adds one view's projection "z"."""

        out["z"] = self.projector(out["feats"])
        return out

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for StableRep: the multi-positive loss of the step's views plus the
        online classifier's loss; logs the projections' collapse signal ``train_embedding_std``
        (:func:`~solo_stablerep.methods.health.embedding_std`).

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y], where
                [X] is a list of size num_crops containing batches of images; all views of
                one index are positives of each other.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: the loss.
        """

        out = self.multi_view_step(batch)
        self.log(
            "train_embedding_std", embedding_std(torch.cat(out["z"])), on_epoch=True, sync_dist=True
        )
        return stablerep_loss(self, batch[0], out["z"]) + out["loss"]
