"""The optional extras that solo-learn features switched on in a pretraining config need.

solo-learn imports these packages only when a feature is on, and then fails with a traceback from
deep inside Lightning or solo-learn, possibly after the data was scanned and the model built.
:func:`check_extras` looks for them first and stops with one line that names the key, the extra
and how to install it (``pip install 'solo-stablerep[wandb]'``, or ``'.[wandb]'`` from a checkout).
"""

import importlib
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from solo_stablerep.errors import MissingExtraError, first_line


class FeatureExtra(NamedTuple):
    key: str  # the cfg key that switches the feature on
    value: object  # ... when it holds this value
    extra: str  # the optional extra of pyproject.toml that installs what it needs
    modules: tuple[str, ...]  # what solo-learn or Lightning import for it
    off: str  # the override that switches it off


FEATURE_EXTRAS = (
    FeatureExtra("wandb.enabled", True, "wandb", ("wandb",), "wandb.enabled=False"),
    # solo.utils.auto_umap imports wandb at its top, whether or not wandb logs
    FeatureExtra(
        "auto_umap.enabled",
        True,
        "umap",
        ("umap", "seaborn", "pandas", "matplotlib", "wandb"),
        "auto_umap.enabled=False",
    ),
    FeatureExtra("data.format", "dali", "dali", ("nvidia.dali",), "data.format=image_folder"),
)


def check_extras(cfg: DictConfig) -> None:
    """Raises MissingExtraError (one line) for the first feature switched on in ``cfg`` whose
    extra is not importable."""

    for feature in FEATURE_EXTRAS:
        if OmegaConf.select(cfg, feature.key, default=None) != feature.value:
            continue
        for module in feature.modules:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise MissingExtraError(
                    f"{feature.key}={feature.value} needs the optional extra [{feature.extra}] "
                    f"({module} cannot be imported: {first_line(error)}): pip install "
                    f"'solo-stablerep[{feature.extra}]' (from a checkout: pip install "
                    f"'.[{feature.extra}]'), or set {feature.off}"
                ) from error
