import math
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
import torch.nn.functional as F
from solo.methods.base import BaseMethod
from solo.utils.misc import omegaconf_select

from solo_stablerep.cfg_defaults import Setting
from solo_stablerep.errors import InputError
from solo_stablerep.losses import image_text_contrastive_loss
from solo_stablerep.losses.distributed import is_distributed
from solo_stablerep.methods.common import MultiViewMethod, require_views
from solo_stablerep.methods.health import embedding_std
from solo_stablerep.methods.stablerep import StableRep, projector_of, stablerep_loss
from solo_stablerep.rules import NAMES, at_least, containing, greater_than, integer, null_or
from solo_stablerep.text import CaptionTokenizer, build_text_tower

# CLIP's initial temperature 0.07 and its ceiling on the logit scale (open_clip clamps log s
# to [0, log 100] after every optimizer step)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


class StableRepPP(MultiViewMethod, BaseMethod):
    # batches are (indexes, views, targets, caption tokens) (see EntryPointNeeds)
    needs_captions = True
    SETTINGS = (
        *StableRep.SETTINGS,
        Setting("w1", 1.0, at_least(0), "weight of the image–image loss; 0: CLIP (no projector)"),
        Setting(
            "w2",
            1.0,
            greater_than(0),
            "weight of the image–text loss",
            hint="without the image-text term use method=stablerep",
        ),
        Setting("embed_dim", 512, integer(1), "joint image–text embedding dimension"),
        Setting("text_width", 512, integer(1), "width of the text transformer (CLIP ViT-B/16's)"),
        Setting("text_layers", 12, integer(1), "depth of the text transformer"),
        Setting("text_heads", 8, integer(1), "attention heads of the text transformer"),
        Setting(
            "context_length",
            77,
            integer(2),
            "caption tokens; longer captions are truncated",
            hint="<sot> and <eot>",
        ),
        Setting("class_names", None, null_or(NAMES), "zero-shot classes (null: the data set's)"),
        Setting(
            "zero_shot_template", "a photo of a {name}", containing("{name}"), "prompt of a class"
        ),
    )

    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements StableRep++ (Tian, Fan, Isola, Chang, Krishnan, "StableRep: Synthetic Images
        from Text-to-Image Models Make Strong Visual Representation Learners", NeurIPS 2023,
        https://arxiv.org/abs/2306.00984, section 2.3): StableRep's image–image loss plus a
        CLIP-style image–text contrastive loss between the images and the caption they were
        generated from, ``w1 * image_image + w2 * image_text``.

        The image–image term is StableRep's (its projector, temperature and loss,
        :func:`~solo_stablerep.methods.stablerep.stablerep_loss`). The image–text term uses a
        linear projection of the backbone features (initialised from N(0, features_dim^-0.5), as
        in the authors' code) and a CLIP text tower (open_clip's ``TextTransformer`` with CLIP's
        QuickGELU, CLIP BPE tokenizer) into a shared embedding, a learnable logit scale
        (init 1/0.07, clamped at 100) and is multi-positive in both directions
        (:func:`solo_stablerep.losses.image_text_contrastive_loss`). With ``w1: 0`` it is CLIP
        (one image per caption works; the image–image loss and the projector are dropped).
        Training data must carry captions: ``data.dataset: synthetic`` (``data.format``
        image_folder or dali), see :mod:`solo_stablerep.text.captions`.

        Extra cfg settings:
            method_kwargs: StableRep's, and the loss weights ``w1`` and ``w2``, the text tower's
                ``embed_dim``, ``text_width``, ``text_layers``, ``text_heads``,
                ``context_length``, and the online zero-shot accuracy's ``class_names`` (in the
                order of the validation labels, the sorted folder names of ``data.val_path``;
                null: the manifest's class_names when ``data.val_path`` is set, else no
                zero-shot) and ``zero_shot_template``; their types, defaults and meanings are the
                table ``SETTINGS`` (the README's table).
        """

        super().__init__(cfg)

        kwargs = cfg.method_kwargs
        self.temperature: float = kwargs.temperature
        self.w1: float = kwargs.w1
        self.w2: float = kwargs.w2
        # Nothing reads "z" without the image–image term: no projector to train (DDP refuses
        # parameters that get no gradient).
        self.projector = projector_of(kwargs, self.features_dim) if self.w1 > 0 else nn.Identity()
        self.image_projection = nn.Linear(self.features_dim, kwargs.embed_dim, bias=False)
        # the authors' image projection: a (features_dim, embed_dim) matrix from N(0, width^-0.5)
        nn.init.normal_(self.image_projection.weight, std=self.features_dim**-0.5)
        self.text_tower = build_text_tower(
            width=kwargs.text_width,
            layers=kwargs.text_layers,
            heads=kwargs.text_heads,
            context_length=kwargs.context_length,
            embed_dim=kwargs.embed_dim,
        )
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

        self.tokenizer = CaptionTokenizer(kwargs.context_length)
        self.class_names: list[str] | None = (
            list(kwargs.class_names) if kwargs.class_names else _manifest_class_names(cfg)
        )
        self.zero_shot_template: str = kwargs.zero_shot_template
        self._zero_shot_classifier: torch.Tensor | None = None
        self._zero_shot_hits = torch.zeros(2, dtype=torch.long)  # (correct, seen)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config: ``SETTINGS``, enough views
        for the image–image term (one without it), the text tower's heads and the class names.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super().add_and_assert_specific_cfg(cfg)
        kwargs = cfg.method_kwargs
        require_views(cfg, 2 if kwargs.w1 > 0 else 1)
        if kwargs.text_width % kwargs.text_heads:
            raise InputError(
                f"method_kwargs.text_width ({kwargs.text_width}) must be divisible by "
                f"method_kwargs.text_heads ({kwargs.text_heads})"
            )
        names = kwargs.class_names
        num_classes = omegaconf_select(cfg, "data.num_classes", 1)
        if names is not None and num_classes > 1 and len(names) != num_classes:
            raise InputError(
                f"method_kwargs.class_names has {len(names)} names but data.num_classes is "
                f"{num_classes}"
            )
        return cfg

    @property
    def learnable_params(self) -> list[dict]:
        """Adds the projector (with an image–image term), the text tower, the image projection
        and the logit scale (no weight decay, as in CLIP) to the parent's learnable parameters.

        Returns:
            List[dict]: list of learnable parameters.
        """

        projector = [{"name": "projector", "params": self.projector.parameters()}]
        return (
            super().learnable_params
            + (projector if self.w1 > 0 else [])
            + [
                {"name": "text_tower", "params": self.text_tower.parameters()},
                {"name": "image_projection", "params": self.image_projection.parameters()},
                {"name": "logit_scale", "params": [self.logit_scale], "weight_decay": 0.0},
            ]
        )

    def heads(self, out: dict[str, Any]) -> dict[str, Any]:
        """Adds one view's projection "z" (the features themselves without an image–image
        term)."""

        out["z"] = self.projector(out["feats"])
        return out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, embed_dim) text embeddings (not normalised)."""
        return self.text_tower(tokens)

    def image_text_loss(self, batch: Sequence[Any], feats: list[torch.Tensor]) -> torch.Tensor:
        """The image–text loss between every view's image embedding and the caption it was
        generated from (logged as ``train_image_text_loss``, with ``train_logit_scale``).

        Args:
            batch (Sequence[Any]): ``[indexes, [X], Y, tokens]``, tokens (B, context_length)
                the caption's token ids.
            feats (List[torch.Tensor]): the backbone features of each view.

        Returns:
            torch.Tensor: scalar loss.
        """

        indexes, tokens = batch[0], batch[3]
        logit_scale = self.logit_scale.exp()
        loss = image_text_contrastive_loss(
            self.image_projection(torch.cat(feats)),
            self.view_labels(indexes),
            self.encode_text(tokens),
            indexes,
            logit_scale,
            max_rows_per_rank=(self.max_views_per_step, self.batch_size),
        )
        self.log_dict(
            {"train_image_text_loss": loss, "train_logit_scale": logit_scale.detach()},
            on_epoch=True,
            sync_dist=True,
        )
        return loss

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for StableRep++.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y, tokens],
                where [X] is a list of size num_crops containing batches of images (all views of
                one index come from that caption) and tokens (B, context_length) the caption's
                token ids.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: w1 * image-image loss + w2 * image-text loss + the online classifier's
            loss. Logs the projections' collapse signal ``train_embedding_std``.
        """

        if len(batch) != 4:
            raise InputError(
                "stablerep_pp needs batches of (indexes, views, targets, caption tokens), got "
                f"{len(batch)} items: train through solo_stablerep.pretrain on "
                "data.dataset=synthetic"
            )
        out = self.multi_view_step(batch)
        self.log(
            "train_embedding_std", embedding_std(torch.cat(out["z"])), on_epoch=True, sync_dist=True
        )
        image_text = self.image_text_loss(batch, out["feats"])
        if self.w1 == 0:  # CLIP
            return self.w2 * image_text + out["loss"]
        image_image = self.w1 * stablerep_loss(self, batch[0], out["z"])
        return image_image + self.w2 * image_text + out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Sequence[Any], batch_idx: int):
        """Clamps the logit scale to [1, 100] after the optimizer step, as CLIP does."""

        super().on_train_batch_end(outputs, batch, batch_idx)
        with torch.no_grad():
            self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    # ------------------------------------------------------------- online zero-shot evaluation

    def on_validation_epoch_start(self):
        """Embeds one prompt per class with the current text tower (zero-shot classifier)."""

        super().on_validation_epoch_start()
        self._zero_shot_hits = torch.zeros(2, dtype=torch.long, device=self.device)
        if self.class_names:
            prompts = [self.zero_shot_template.format(name=name) for name in self.class_names]
            with torch.no_grad():
                text = self.encode_text(self.tokenizer(prompts).to(self.device))
            self._zero_shot_classifier = F.normalize(text.float(), dim=1)

    def base_validation_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """StableRep's validation step, plus zero-shot predictions counted for the epoch."""

        out = super().base_validation_step(X, targets)
        if self._zero_shot_classifier is not None:
            image = F.normalize(self.image_projection(out["feats"]).float(), dim=1)
            predicted = (image @ self._zero_shot_classifier.T).argmax(dim=1)
            self._zero_shot_hits += torch.stack(
                [(predicted == targets).sum(), torch.tensor(targets.numel(), device=targets.device)]
            )
        return out

    def on_validation_epoch_end(self):
        """Logs ``val_zero_shot_acc1`` (over all ranks' images) with solo-learn's metrics."""

        super().on_validation_epoch_end()
        if self._zero_shot_classifier is None:
            return
        hits = self._zero_shot_hits.clone()
        if is_distributed():
            torch.distributed.all_reduce(hits)
        acc1 = 100.0 * hits[0].float() / hits[1].clamp(min=1).float()
        self.log("val_zero_shot_acc1", acc1)
        self._zero_shot_classifier = None


def _manifest_class_names(cfg: omegaconf.DictConfig) -> list[str] | None:
    """The manifest's class_names when a labelled validation set is used, else None."""

    if cfg.data.get("val_path") is None or cfg.data.get("dataset") != "synthetic":
        return None
    from solo_stablerep.data.config import open_reader

    # cached: the data loader reads the same index
    names = open_reader(cfg).class_names
    return list(names) if names else None
