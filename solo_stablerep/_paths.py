"""Where the files shipped inside the package live, installed or in a source checkout."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


def pretrain_config_dir(group: str = "synthetic") -> Path:
    """The folder of the shipped pretraining configs of ``group`` (``synthetic``,
    ``synthetic-paper`` or ``custom``), to pass to ``--config-path`` or Hydra's
    ``initialize_config_dir``.

    The configs live inside the package (so a wheel carries them); ``scripts/pretrain`` in the
    repository is a link to the same folder.
    """

    path = CONFIGS / group
    if not path.is_dir():
        groups = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"no config group {group!r} in {CONFIGS} (groups: {', '.join(groups)})"
        )
    return path
