"""Finds solo-learn and checks that it is the release this package is built against."""

import contextlib
import importlib
import warnings
from importlib import metadata

SOLO_LEARN_COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"
SOLO_LEARN_VERSION = "1.0.6"
INSTALL_HINT = (
    f"install solo-learn {SOLO_LEARN_VERSION} (commit {SOLO_LEARN_COMMIT[:7]}) with "
    "`bash scripts/install_solo_learn.sh` (or `bash scripts/install_solo_learn.sh "
    "/path/to/solo-learn-source` offline); PyPI's solo-learn 1.0.2 does not work"
)


class SoloLearnNotAvailable(ImportError):
    pass


@contextlib.contextmanager
def _quiet_imports():
    # solo-learn's modules and the timm/torch APIs they use emit a screenful of deprecation
    # and registry warnings on import that say nothing to our users
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning, DeprecationWarning))
        yield


def check_solo_learn() -> None:
    """Raises SoloLearnNotAvailable with an actionable one-line message if solo-learn is
    missing or is an old release (1.0.2 on PyPI has the argparse API and no Hydra configs)."""

    try:
        with _quiet_imports():
            importlib.import_module("solo")
    except ImportError as error:
        raise SoloLearnNotAvailable(
            f"solo-learn is not importable ({error}): {INSTALL_HINT}"
        ) from error
    try:
        with _quiet_imports():
            pretrain = importlib.import_module("solo.args.pretrain")
            methods = importlib.import_module("solo.methods")
        # the Hydra entry point and the method registry this package plugs into
        new_enough = hasattr(pretrain, "parse_cfg") and hasattr(methods, "METHODS")
    except (ImportError, AttributeError):
        new_enough = False
    if not new_enough:
        try:
            version = metadata.version("solo-learn")
        except metadata.PackageNotFoundError:
            version = "unknown"
        raise SoloLearnNotAvailable(
            f"solo-learn {version} is too old (no solo.args.pretrain.parse_cfg): {INSTALL_HINT}"
        )
