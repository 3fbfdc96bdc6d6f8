"""Where the command-line tools send log records (standard library only).

Library modules log through ``logging.getLogger(__name__)`` and never configure output; each entry
point calls :func:`configure_logging` once. Only this project's INFO lines are shown, with
everyone's warnings: torch.distributed, Hydra and timm log at INFO too, and would bury them.
"""

import logging
import sys

OUR_LOGGERS = ("solo_stablerep", "data_gen")


def configure_logging(fmt: str = "%(name)s: %(message)s", datefmt=None) -> None:
    """INFO records of :data:`OUR_LOGGERS` and WARNING or worse of any logger, on stderr."""

    handler = logging.StreamHandler(sys.stderr)
    # a filter on the handler, not logger levels: a library imported later may reset its own level
    handler.addFilter(
        lambda record: record.levelno >= logging.WARNING or record.name.startswith(OUR_LOGGERS)
    )
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt=datefmt, handlers=[handler])
