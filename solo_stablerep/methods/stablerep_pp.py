import math
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
import torch.nn.functional as F
from solo.utils.misc import omegaconf_select

from solo_stablerep.errors import InputError
from solo_stablerep.losses import image_text_contrastive_loss
from solo_stablerep.losses.distributed import is_distributed
from solo_stablerep.methods.stablerep import StableRep
from solo_stablerep.text import CaptionTokenizer, build_text_tower

# CLIP's initial temperature 0.07 and its ceiling on the logit scale (open_clip clamps log s
# to [0, log 100] after every optimizer step)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


class StableRepPP(StableRep):
    # batches are (indexes, views, targets, caption tokens) (see EntryPointNeeds)
    needs_captions = True
    KWARGS_DEFAULTS = {
        **StableRep.KWARGS_DEFAULTS,
        "embed_dim": 512,
        "text_width": 512,
        "text_layers": 12,
        "text_heads": 8,
        "context_length": 77,
        "w1": 1.0,
        "w2": 1.0,
        "class_names": None,
        "zero_shot_template": "a photo of a {name}",
    }

    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements StableRep++ (Tian, Fan, Isola, Chang, Krishnan, "StableRep: Synthetic Images
        from Text-to-Image Models Make Strong Visual Representation Learners", NeurIPS 2023,
        https://arxiv.org/abs/2306.00984, section 2.3): StableRep's image–image loss plus a
        CLIP-style image–text contrastive loss between the images and the caption they were
        generated from, ``w1 * image_image + w2 * image_text``.

        The image–image term is StableRep's (its projector and temperature: this class extends
        :class:`StableRep`). The image–text term uses a linear projection of the backbone
        features (initialised from N(0, features_dim^-0.5), as in the authors' code) and a CLIP
        text tower (open_clip's ``TextTransformer`` with CLIP's QuickGELU, CLIP BPE tokenizer)
        into a shared embedding, a learnable logit scale
        (init 1/0.07, clamped at 100) and is multi-positive in both directions
        (:func:`solo_stablerep.losses.image_text_contrastive_loss`). With ``w1: 0`` it is CLIP
        (one image per caption works; the image–image loss and the projector are dropped).
        Training data must carry captions: ``data.dataset: synthetic`` (``data.format``
        image_folder or dali), see :mod:`solo_stablerep.text.captions`.

        Extra cfg settings (besides StableRep's proj_hidden_dim, proj_output_dim,
        proj_num_layers and temperature):
            method_kwargs:
                embed_dim (int): dimension of the shared image–text embedding. Defaults to 512.
                text_width (int): width of the text transformer. Defaults to 512.
                text_layers (int): depth of the text transformer. Defaults to 12.
                text_heads (int): attention heads of the text transformer. Defaults to 8.
                context_length (int): caption token slots; longer captions are truncated.
                    Defaults to 77.
                w1 (float): weight of the image–image loss; 0 drops it. Defaults to 1.
                w2 (float): weight of the image–text loss, > 0. Defaults to 1.
                class_names (Optional[List[str]]): class names in the order of the validation
                    labels (sorted folder names of ``data.val_path``), for online zero-shot
                    classification logged as ``val_zero_shot_acc1``. Defaults to the manifest's
                    class_names when ``data.val_path`` is set, else None (no zero-shot).
                zero_shot_template (str): prompt of a class, with ``{name}``. Defaults to
                    "a photo of a {name}".
        """

        super().__init__(cfg)

        kwargs = cfg.method_kwargs
        self.w2: float = kwargs.w2
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
    def image_image_weight(cls, cfg: omegaconf.DictConfig) -> float:
        """``method_kwargs.w1``: 0 is CLIP (one image per caption is enough)."""

        return cfg.method_kwargs.w1

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config: StableRep's, then the
        loss weights, the text tower and the zero-shot settings.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super().add_and_assert_specific_cfg(cfg)
        kwargs = cfg.method_kwargs
        if not kwargs.w1 >= 0:
            raise InputError(f"method_kwargs.w1 must be >= 0, got {kwargs.w1}")
        if not kwargs.w2 > 0:
            raise InputError(
                f"method_kwargs.w2 must be > 0, got {kwargs.w2} (without the image-text term use "
                "method=stablerep)"
            )
        check_text_tower_kwargs(kwargs)
        names = kwargs.class_names
        if names is not None and (
            isinstance(names, str) or not names or not all(isinstance(n, str) for n in names)
        ):
            raise InputError(
                f"method_kwargs.class_names must be null or a list of names, got {names}"
            )
        num_classes = omegaconf_select(cfg, "data.num_classes", 1)
        if names is not None and num_classes > 1 and len(names) != num_classes:
            raise InputError(
                f"method_kwargs.class_names has {len(names)} names but data.num_classes is "
                f"{num_classes}"
            )
        if "{name}" not in kwargs.zero_shot_template:
            raise InputError(
                f"method_kwargs.zero_shot_template must contain {{name}}, got "
                f"{kwargs.zero_shot_template!r}"
            )
        return cfg

    @property
    def learnable_params(self) -> list[dict]:
        """Adds the text tower, the image projection and the logit scale (no weight decay, as in
        CLIP) to StableRep's learnable parameters.

        Returns:
            List[dict]: list of learnable parameters.
        """

        return super().learnable_params + [
            {"name": "text_tower", "params": self.text_tower.parameters()},
            {"name": "image_projection", "params": self.image_projection.parameters()},
            {"name": "logit_scale", "params": [self.logit_scale], "weight_decay": 0.0},
        ]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) token ids -> (B, embed_dim) text embeddings (not normalised)."""
        return self.text_tower(tokens)

    def contrastive_loss(self, batch: Sequence[Any], out: dict[str, Any]) -> torch.Tensor:
        """StableRep's ``w1 *`` image–image loss plus ``w2 *`` the image–text loss between
        every view's image embedding and the caption it was generated from (logged as
        ``train_image_text_loss``, with ``train_logit_scale``).

        Args:
            batch (Sequence[Any]): ``[indexes, [X], Y, tokens]``, tokens (B, context_length)
                the caption's token ids.
            out (Dict[str, Any]): solo-learn's step outputs: per view, "feats" and "z".

        Returns:
            torch.Tensor: scalar loss.
        """

        indexes, tokens = batch[0], batch[3]
        image_emb = self.image_projection(torch.cat(out["feats"]))
        logit_scale = self.logit_scale.exp()
        image_text_loss = image_text_contrastive_loss(
            image_emb,
            self.view_labels(indexes),
            self.encode_text(tokens),
            indexes,
            logit_scale,
            max_rows_per_rank=(self.max_views_per_step, self.batch_size),
        )
        self.log_dict(
            {"train_image_text_loss": image_text_loss, "train_logit_scale": logit_scale.detach()},
            on_epoch=True,
            sync_dist=True,
        )
        return super().contrastive_loss(batch, out) + self.w2 * image_text_loss

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for StableRep++: StableRep's, on batches that carry caption tokens.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y, tokens],
                where [X] is a list of size num_crops containing batches of images (all views of
                one index come from that caption) and tokens (B, context_length) the caption's
                token ids.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: w1 * image-image loss + w2 * image-text loss + the online classifier's
            loss.
        """

        if len(batch) != 4:
            raise InputError(
                "stablerep_pp needs batches of (indexes, views, targets, caption tokens), got "
                f"{len(batch)} items: train through solo_stablerep.pretrain on "
                "data.dataset=synthetic"
            )
        return super().training_step(batch, batch_idx)

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


def check_text_tower_kwargs(kwargs: omegaconf.DictConfig) -> None:
    """The one check of the text tower's and the tokenizer's settings (``build_text_tower`` and
    ``CaptionTokenizer`` take them as given): a one-line error naming the bad key."""

    for key in ("embed_dim", "text_width", "text_layers", "text_heads"):
        if not (isinstance(kwargs[key], int) and kwargs[key] >= 1):
            raise InputError(f"method_kwargs.{key} must be an integer >= 1, got {kwargs[key]}")
    if not (isinstance(kwargs.context_length, int) and kwargs.context_length >= 2):
        raise InputError(
            f"method_kwargs.context_length must be an integer >= 2 (<sot> and <eot>), got "
            f"{kwargs.context_length}"
        )
    if kwargs.text_width % kwargs.text_heads:
        raise InputError(
            f"method_kwargs.text_width ({kwargs.text_width}) must be divisible by "
            f"method_kwargs.text_heads ({kwargs.text_heads})"
        )
