import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
from solo.methods.base import BaseMomentumMethod
from solo.methods.dino import DINOHead
from solo.utils.misc import omegaconf_select
from solo.utils.momentum import MomentumUpdater, initialize_momentum_params
from timm.layers import trunc_normal_

from solo_stablerep.cfg_defaults import Setting
from solo_stablerep.errors import InputError
from solo_stablerep.losses import (
    LabelledKeyQueue,
    ibot_patch_loss,
    momentum_multi_positive_loss,
    sinkhorn_knopp,
)
from solo_stablerep.methods.common import MultiViewMethod, concat, require_views
from solo_stablerep.methods.health import embedding_std, mean_cosine
from solo_stablerep.methods.stablerep import PROJECTOR_SETTINGS, build_projector, projector_of
from solo_stablerep.rules import BOOLEAN, at_least, greater_than, integer, null_or, one_of, within


def vit_tokens(
    vit: nn.Module, X: torch.Tensor, masks: torch.Tensor = None, mask_token: torch.Tensor = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ViT's features (what ``vit(X)`` returns) and its patch tokens after the final
    norm, with the patches flagged in ``masks`` (B, T) replaced by ``mask_token`` (iBOT) as they
    leave ``vit.patch_embed``: timm's public ``forward_features`` and ``forward_head`` around a
    forward hook, not timm's private position-embedding step."""

    def mask_patches(module, inputs, x):  # x: (B, T, C), or (B, H, W, C) with dynamic_img_size
        return torch.where(masks.view(x.shape[:-1])[..., None], mask_token.to(x.dtype), x)

    hook = vit.patch_embed.register_forward_hook(mask_patches) if masks is not None else None
    try:
        x = vit.forward_features(X)
    finally:
        if hook is not None:
            hook.remove()
    return vit.forward_head(x, pre_logits=True), x[:, vit.num_prefix_tokens :]


def num_patches(vit: nn.Module, X: torch.Tensor) -> int:
    patch_h, patch_w = vit.patch_embed.patch_size
    return (X.shape[-2] // patch_h) * (X.shape[-1] // patch_w)


def random_patch_masks(
    n_images: int, n_tokens: int, image_fraction: float, token_fraction: float, device
) -> torch.Tensor:
    """(n_images, n_tokens) bool: ``int(n_images * image_fraction)`` images chosen at random,
    each with ``int(n_tokens * token_fraction)`` patches chosen at random (the authors' "rand"
    masks with ``--mask_probability`` and a single ``--mask_ratio``)."""

    token_ranks = torch.rand(n_images, n_tokens, device=device).argsort(dim=1).argsort(dim=1)
    masks = token_ranks < int(n_tokens * token_fraction)
    masked_images = torch.randperm(n_images, device=device) < int(n_images * image_fraction)
    return masks & masked_images[:, None]


def build_layer_norm_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int
) -> nn.Sequential:
    """The authors' projector and predictor (``MLPHead``, ``--contrast_mlp_norm ln``, their
    default): ``num_layers`` linear layers with LayerNorm + GELU between them, the last without
    bias and followed by a LayerNorm without affine parameters; linear weights truncated normal
    (std 0.02), biases 0."""

    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.LayerNorm(dims[i + 1]), nn.GELU()]
    layers += [
        nn.Linear(dims[-2], out_dim, bias=False),
        nn.LayerNorm(out_dim, elementwise_affine=False),
    ]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


HEAD_BUILDERS = {"ln": build_layer_norm_head, "bn": build_projector}


def warmup_teacher_temperature(
    epoch: float, start: float, end: float, warmup_epochs: float
) -> float:
    """iBOT's teacher temperature after ``epoch`` (fractional) epochs: linear from ``start`` to
    ``end`` over ``warmup_epochs``, then ``end`` (the authors' ``teacher_temp_schedule``, as
    DINO's); ``warmup_epochs`` 0: ``end`` throughout."""

    if epoch >= warmup_epochs:
        return end
    alpha = epoch / warmup_epochs
    return start * (1 - alpha) + end * alpha


class FusedMomentumUpdater(MomentumUpdater):
    """solo-learn's EMA update, ``teacher = tau * teacher + (1 - tau) * student``, as one fused
    in-place ``torch._foreach_lerp_`` over a module's parameters instead of a Python loop that
    allocates two temporaries per parameter (same value up to rounding; tau schedule unchanged).
    """

    @torch.no_grad()
    def update(self, online_net: nn.Module, momentum_net: nn.Module):
        torch._foreach_lerp_(
            list(momentum_net.parameters()), list(online_net.parameters()), 1 - self.cur_tau
        )


class SynCLR(MultiViewMethod, BaseMomentumMethod):
    SETTINGS = (
        *PROJECTOR_SETTINGS[:2],
        dataclasses.replace(
            PROJECTOR_SETTINGS[2], meaning="layers of both projectors (student and teacher)"
        ),
        Setting("temperature", 0.08, greater_than(0), "contrastive temperature"),
        *MultiViewMethod.SETTINGS,
        Setting("pred_hidden_dim", 4096, integer(1), "hidden width of the student's predictor"),
        Setting("pred_num_layers", 2, integer(0), "linear layers of the predictor; 0: none"),
        Setting(
            "head_norm", "ln", one_of(*HEAD_BUILDERS), "`ln` or `bn` heads: [the heads](#the-heads)"
        ),
        Setting(
            "num_local_crops", 4, integer(0), "local crops per global crop (as augmentations give)"
        ),
        Setting(
            "avoid_local_global_same", True, BOOLEAN, "a local crop never sees its own image's key"
        ),
        Setting(
            "queue_size", 0, integer(0), "keys of earlier steps kept; a multiple of a step's keys"
        ),
        Setting("ibot_weight", 0.0, at_least(0), "weight of the iBOT loss (ViT only); 0: off"),
        Setting("ibot_num_prototypes", 8192, integer(1), "iBOT head prototypes (paper: 65536)"),
        Setting("ibot_head_hidden_dim", 2048, integer(1), "hidden width of the iBOT head"),
        Setting("ibot_head_bottleneck_dim", 256, integer(1), "bottleneck of the iBOT head"),
        Setting("ibot_mask_probability", 0.5, within(0, 1), "share of global crops masked"),
        Setting("ibot_mask_ratio", 0.5, within(0, 1), "share of a masked crop's patches masked"),
        Setting("ibot_student_temperature", 0.1, greater_than(0), "iBOT student temperature"),
        Setting(
            "ibot_teacher_temperature", 0.07, greater_than(0), "iBOT teacher temperature, warmed up"
        ),
        Setting(
            "ibot_warmup_teacher_temperature", 0.04, greater_than(0), "iBOT teacher's at the start"
        ),
        Setting(
            "ibot_warmup_teacher_temperature_epochs", 1.0, at_least(0), "warm-up epochs; 0: none"
        ),
        Setting(
            "weight_decay_end", None, null_or(at_least(0)), "weight decay's cosine end; null: none"
        ),
    )

    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements SynCLR (Tian, Fan, Chen, Katabi, Krishnan, Isola, "Learning Vision from
        Models Rivals Learning Vision from Data", CVPR 2024, https://arxiv.org/abs/2312.17742):
        StableRep's multi-positive contrastive loss between the student's crops and the keys of
        an EMA teacher (backbone + projector), with multi-crop and, for ViTs, iBOT's
        masked-patch loss.

        Each image of a caption gives one global crop (the first augmentation pipeline, seen by
        student and teacher) and ``num_local_crops`` local crops (a pipeline of a smaller
        crop_size, student only). Student queries (projector then predictor) of every crop are
        contrasted against the all-gathered teacher keys of the global crops, positives being
        the keys of the same caption
        (:func:`solo_stablerep.losses.momentum_multi_positive_loss`). The teacher follows
        solo-learn's momentum conventions (:class:`~solo.methods.base.BaseMomentumMethod`:
        ``momentum.base_tau`` to ``momentum.final_tau`` on a cosine schedule over the steps).
        For other data than ``synthetic`` (an item is one image), every global crop of an item
        counts as an image of it and the local crops are split evenly between them. A ViT
        backbone gets timm's ``dynamic_img_size`` when there are local crops (its position
        embedding is interpolated to their size; no parameter changes).

        The teacher forwards all global crops of a step in one call, as the authors' teacher
        takes the collated global crops (solo-learn's ``BaseMomentumMethod`` makes a call per
        crop): with a BatchNorm backbone (a resnet) or ``head_norm: bn``, the teacher's batch
        statistics are over all global crops of the step, not over one crop at a time. The
        student forwards its crops ``views_per_backbone_call`` at a time (global
        and local crops alike, each call one crop size; 1: solo-learn's call per crop).

        Extra cfg settings:
            method_kwargs: the projector's (``proj_*``; ``head_norm`` "ln": the authors' LayerNorm
                MLPs, "bn": StableRep's), the predictor's (``pred_*``), ``temperature``,
                ``num_local_crops``, ``avoid_local_global_same``, ``queue_size`` (keys kept with
                their captions: same caption = positive), iBOT's (``ibot_*``; the teacher
                temperature's warm-up counted in optimiser steps, as solo-learn counts
                ``scheduler.warmup_epochs``), ``weight_decay_end`` (a cosine of the decayed
                groups' weight decay; SynCLR: 0.04 to 0.2) and ``views_per_backbone_call``; their
                types, defaults and meanings are the table ``SETTINGS`` (docs/synclr.md's).
            momentum:
                base_tau (float): initial EMA coefficient. SynCLR: 0.994.
                final_tau (float): final EMA coefficient. SynCLR: 1.0.
        """

        super().__init__(cfg)

        kwargs = cfg.method_kwargs
        self.avoid_local_global_same: bool = kwargs.avoid_local_global_same
        self.local_crops_per_global: int = kwargs.num_local_crops
        self.temperature: float = kwargs.temperature
        build_head = HEAD_BUILDERS[kwargs.head_norm]
        self.projector = projector_of(kwargs, self.features_dim, build_head)
        if kwargs.pred_num_layers > 0:
            self.predictor = build_head(
                kwargs.proj_output_dim,
                kwargs.pred_hidden_dim,
                kwargs.proj_output_dim,
                kwargs.pred_num_layers,
            )
        else:
            self.predictor = nn.Identity()
        self.momentum_projector = projector_of(kwargs, self.features_dim, build_head)
        initialize_momentum_params(self.projector, self.momentum_projector)
        self.momentum_updater = FusedMomentumUpdater(cfg.momentum.base_tau, cfg.momentum.final_tau)
        self.queue = (
            LabelledKeyQueue(kwargs.queue_size, kwargs.proj_output_dim)
            if kwargs.queue_size
            else None
        )

        self.ibot_weight: float = kwargs.ibot_weight
        # set per step by on_train_batch_start; its value at step 0 until then
        self.ibot_teacher_temperature: float = self.teacher_temperature_at(0.0)
        if self.ibot_weight > 0:
            head_kwargs = dict(
                in_dim=self.features_dim,
                num_prototypes=kwargs.ibot_num_prototypes,
                use_bn=False,
                norm_last_layer=False,
                hidden_dim=kwargs.ibot_head_hidden_dim,
                bottleneck_dim=kwargs.ibot_head_bottleneck_dim,
            )
            self.ibot_head = DINOHead(**head_kwargs)
            self.momentum_ibot_head = DINOHead(**head_kwargs)
            initialize_momentum_params(self.ibot_head, self.momentum_ibot_head)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.features_dim))

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config: SynCLR's EMA schedule unless
        the config sets solo-learn's momentum keys, ``SETTINGS``, then one line for each setting
        SynCLR cannot run with: too few images or crops, local crops that do not match the
        augmentations, iBOT without a ViT, a queue that is not a multiple of a step's keys.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg.momentum = omegaconf_select(cfg, "momentum", {})
        cfg.momentum.base_tau = omegaconf_select(cfg, "momentum.base_tau", 0.994)
        cfg.momentum.final_tau = omegaconf_select(cfg, "momentum.final_tau", 1.0)
        cfg = super().add_and_assert_specific_cfg(cfg)
        require_views(cfg, 2)
        kwargs, data = cfg.method_kwargs, cfg.data
        if data.dataset == "synthetic" and data.synthetic.n_img < 2:
            raise InputError(
                f"method synclr needs at least 2 images per caption, got data.synthetic.n_img="
                f"{data.synthetic.n_img}: the keys of the other images are a crop's positives"
            )
        if data.num_large_crops < 2:
            raise InputError(
                f"method synclr needs at least 2 global crops per item, got "
                f"{data.num_large_crops}: raise augmentations[0].num_crops"
            )
        local_crops = kwargs.num_local_crops
        if local_crops > 0 and data.num_small_crops == 0:
            raise InputError(
                f"method_kwargs.num_local_crops={local_crops} but no augmentation makes local "
                "crops: add a pipeline with a smaller crop_size to augmentations (see "
                "scripts/pretrain/synthetic/augmentations/synclr.yaml) or set num_local_crops=0"
            )
        if data.num_small_crops != local_crops * data.num_large_crops:
            raise InputError(
                f"method_kwargs.num_local_crops={local_crops} per global crop, but the "
                f"augmentations give {data.num_small_crops} local crops for "
                f"{data.num_large_crops} global ones: make the local pipeline's num_crops agree"
            )
        vit = cfg.backbone.name.startswith("vit")
        if vit and data.num_small_crops:
            # timm interpolates the position embedding for the local crops' size
            cfg.backbone.kwargs = omegaconf_select(cfg, "backbone.kwargs", {})
            cfg.backbone.kwargs.dynamic_img_size = True
        if kwargs.ibot_weight > 0 and not vit:
            raise InputError(
                f"method_kwargs.ibot_weight={kwargs.ibot_weight} needs a ViT backbone (iBOT masks "
                f"patch tokens), got backbone.name={cfg.backbone.name}: set ibot_weight=0"
            )
        devices = omegaconf_select(cfg, "devices", 1)
        devices = devices if isinstance(devices, int) else len(devices)
        keys_per_step = (
            cfg.optimizer.batch_size * data.num_large_crops * devices * cfg.get("num_nodes", 1)
        )
        if kwargs.queue_size % keys_per_step:
            raise InputError(
                f"method_kwargs.queue_size={kwargs.queue_size} must be 0 or a multiple of the "
                f"teacher keys of one step, {keys_per_step} (batch_size x global crops x devices "
                "x num_nodes)"
            )
        return cfg

    @property
    def learnable_params(self) -> list[dict]:
        """Adds the projector, the predictor and, with iBOT, its head and mask token to the
        parent's.

        Returns:
            List[dict]: list of learnable parameters.
        """

        extra = [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]
        if self.ibot_weight > 0:
            extra.append({"name": "ibot_head", "params": self.ibot_head.parameters()})
            extra.append({"name": "mask_token", "params": [self.mask_token], "weight_decay": 0.0})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """The teacher's backbone, projector and, with iBOT, prototype head follow the student's.

        Returns:
            List[Tuple[Any, Any]]: list of momentum pairs (two element tuples).
        """

        pairs = super().momentum_pairs + [(self.projector, self.momentum_projector)]
        if self.ibot_weight > 0:
            pairs.append((self.ibot_head, self.momentum_ibot_head))
        return pairs

    def heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """Adds one view's projection "z" and the predictor's query "q"."""

        out["z"] = self.projector(out["feats"])
        out["q"] = self.predictor(out["z"])
        return out

    def large_views_forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One backbone call over global crops; with iBOT, some images of each crop have
        masked patches (drawn per crop, as one crop at a time would) and the outputs gain their
        "ibot_masks" and the student's "patch_tokens"."""

        if self.ibot_weight == 0:
            return super().large_views_forward(views)
        kwargs = self.cfg.method_kwargs
        masks = concat(
            [
                random_patch_masks(
                    X.shape[0],
                    num_patches(self.backbone, X),
                    kwargs.ibot_mask_probability,
                    kwargs.ibot_mask_ratio,
                    X.device,
                )
                for X in views
            ]
        )
        feats, patch_tokens = vit_tokens(self.backbone, concat(views), masks, self.mask_token)
        return {
            "feats": feats,
            "logits": self.classifier(feats.detach()),
            "patch_tokens": patch_tokens,
            "ibot_masks": masks,
        }

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """The teacher on global crops: features, key "z" and, with iBOT, "patch_tokens"."""

        if self.ibot_weight == 0:
            out = super().momentum_forward(X)
        else:
            feats, patch_tokens = vit_tokens(self.momentum_backbone, X)
            out = {"feats": feats, "patch_tokens": patch_tokens}
        out["z"] = self.momentum_projector(out["feats"])
        return out

    def teacher_outputs(self, batch: Sequence[Any]) -> dict[str, Any]:
        """The teacher's outputs of a step, as ``BaseMomentumMethod.training_step`` gives them
        ("momentum_feats", "momentum_z" and, with iBOT, "momentum_patch_tokens": one per global
        crop), from ONE teacher call over all global crops of the step (solo-learn's
        ``_shared_step_momentum`` on their concatenation, split back per crop) instead of one
        call per crop: the authors' teacher takes the collated global crops. With
        ``momentum.classifier``, its loss and accuracies over all the global crops are the mean
        over crops that solo-learn takes (crops of equal size), logged under solo-learn's names.
        """

        _, X, targets = batch
        crops = X[: self.num_large_crops]
        out = self._shared_step_momentum(concat(crops), targets.repeat(len(crops)))
        metrics = {key: out.pop(key) for key in ("loss", "acc1", "acc5") if key in out}
        sizes = [len(crop) for crop in crops]
        outs = {f"momentum_{key}": list(value.split(sizes)) for key, value in out.items()}
        if metrics:
            self.log_dict(
                {
                    "train_momentum_class_loss": metrics["loss"],
                    "train_momentum_acc1": metrics["acc1"],
                    "train_momentum_acc5": metrics["acc5"],
                },
                on_epoch=True,
                sync_dist=True,
            )
        outs.update({f"momentum_{key}": value for key, value in metrics.items()})
        return outs

    def step_outputs(self, batch: Sequence[Any], batch_idx: int) -> dict[str, Any]:
        """The student's outputs (:meth:`multi_view_step`) and the teacher's
        (:meth:`teacher_outputs`), with the momentum classifier's loss added as
        ``BaseMomentumMethod.training_step`` adds it."""

        outs = self.multi_view_step(batch)
        teacher = self.teacher_outputs(batch)
        if "momentum_loss" in teacher:
            outs["loss"] = outs["loss"] + teacher["momentum_loss"]
        outs.update(teacher)
        return outs

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for SynCLR: :meth:`contrastive_loss` plus the online classifiers'.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y], where
                [X] is a list of size num_crops: the global crops, then the local crops.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: the loss.
        """

        out = self.step_outputs(batch, batch_idx)
        return self.contrastive_loss(batch, out) + out["loss"]

    def teacher_temperature_at(self, epoch: float) -> float:
        """iBOT's teacher temperature after ``epoch`` epochs (:func:`warmup_teacher_temperature`
        with this run's settings)."""

        kwargs = self.cfg.method_kwargs
        return warmup_teacher_temperature(
            epoch,
            kwargs.ibot_warmup_teacher_temperature,
            kwargs.ibot_teacher_temperature,
            kwargs.ibot_warmup_teacher_temperature_epochs,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Sets this step's iBOT teacher temperature and the weight decay of the decayed groups
        (``weight_decay_end``), both from the optimiser steps done so far."""

        progress = self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches)
        if self.ibot_weight > 0:
            self.ibot_teacher_temperature = self.teacher_temperature_at(progress * self.max_epochs)
            self.log("ibot_teacher_temperature", self.ibot_teacher_temperature)
        end = self.cfg.method_kwargs.weight_decay_end
        if end is None:
            return
        decay = end + (self.weight_decay - end) * (1 + math.cos(math.pi * progress)) / 2
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                # groups created without decay (biases, norms, the classifier) stay at 0
                group.setdefault("decayed", group["weight_decay"] > 0)
                if group["decayed"]:
                    group["weight_decay"] = decay

    def local_owners(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """For each row of the concatenated local views, the row of its image's global view:
        local view ``s`` belongs to global view ``s // num_local_crops`` (the loaders order an
        image's local crops together), row ``b`` of a view to item ``b``."""

        n_local_views = self.num_small_crops
        global_view = torch.arange(n_local_views, device=device) // self.local_crops_per_global
        rows = torch.arange(batch_size, device=device)
        return (global_view[:, None] * batch_size + rows[None, :]).flatten()

    def contrastive_loss(self, batch: Sequence[Any], out: dict[str, Any]) -> torch.Tensor:
        """SynCLR's loss: the momentum multi-positive loss (logged as ``train_synclr_loss``) plus
        ``ibot_weight`` times the iBOT loss (``train_ibot_loss``); logs :meth:`log_health`.

        Args:
            batch (Sequence[Any]): the training batch, ``[indexes, [X], Y]``.
            out (Dict[str, Any]): the step outputs: student "q" per view, teacher
                "momentum_z" per global view (and the iBOT tokens).

        Returns:
            torch.Tensor: scalar loss.
        """

        indexes = batch[0]
        queries = out["q"]
        local_queries = local_owners = None
        if self.num_small_crops > 0:
            local_queries = torch.cat(queries[self.num_large_crops :])
            local_owners = self.local_owners(indexes.shape[0], indexes.device)
        loss = momentum_multi_positive_loss(
            torch.cat(queries[: self.num_large_crops]),
            torch.cat(out["momentum_z"]),
            indexes.repeat(self.num_large_crops),
            local_queries,
            local_owners,
            temperature=self.temperature,
            avoid_local_global_same=self.avoid_local_global_same,
            queue=self.queue,
            max_rows_per_rank=self.batch_size * self.num_large_crops,
        )
        self.log("train_synclr_loss", loss, on_epoch=True, sync_dist=True)
        self.log_health(queries[: self.num_large_crops], out["momentum_z"])
        if self.ibot_weight > 0:
            ibot_loss = self.ibot_loss(out)
            self.log("train_ibot_loss", ibot_loss, on_epoch=True, sync_dist=True)
            loss = loss + self.ibot_weight * ibot_loss
        return loss

    def log_health(self, global_queries: list[torch.Tensor], keys: list[torch.Tensor]) -> None:
        """Logs the collapse signal (:func:`~solo_stablerep.methods.health.embedding_std`) of the
        student's global queries (``train_embedding_std``) and of the teacher's keys
        (``train_teacher_embedding_std``), and the student–teacher agreement: the mean cosine
        between a global query and the key of the same crop (``train_student_teacher_cosine``).
        """

        queries, keys = torch.cat(global_queries), torch.cat(keys)
        health = {
            "train_embedding_std": embedding_std(queries),
            "train_teacher_embedding_std": embedding_std(keys),
            "train_student_teacher_cosine": mean_cosine(queries, keys),
        }
        for name, value in health.items():
            self.log(name, value, on_epoch=True, sync_dist=True)

    def ibot_loss(self, out: dict[str, Any]) -> torch.Tensor:
        """iBOT's loss over the masked patches of every global view (the teacher sees them
        unmasked), with Sinkhorn–Knopp targets (:mod:`solo_stablerep.losses.ibot`)."""

        kwargs = self.cfg.method_kwargs
        masks = torch.cat(out["ibot_masks"])
        student_tokens = torch.cat(out["patch_tokens"])[masks]
        with torch.no_grad():
            teacher_tokens = torch.cat(out["momentum_patch_tokens"])[masks]
            targets = sinkhorn_knopp(
                self.momentum_ibot_head(teacher_tokens), self.ibot_teacher_temperature
            )
        return ibot_patch_loss(
            self.ibot_head(student_tokens), targets, masks, kwargs.ibot_student_temperature
        )
