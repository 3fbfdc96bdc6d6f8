"""What the command-line tools share (standard library only): where log records go, and how an
input error ends a command.

Library modules log through ``logging.getLogger(__name__)`` and never configure output; each entry
point calls :func:`configure_logging` once. Only this project's INFO lines are shown, with
everyone's warnings: torch.distributed, Hydra and timm log at INFO too, and would bury them.
Each entry point runs its work through :func:`run_command`: bad input is one line and exit code 2.
"""

import logging
import sys
from collections.abc import Callable

from solo_stablerep.errors import INPUT_ERROR_EXIT, InputError

OUR_LOGGERS = ("solo_stablerep", "data_gen")


def configure_logging(fmt: str = "%(name)s: %(message)s", datefmt=None) -> None:
    """INFO records of :data:`OUR_LOGGERS` and WARNING or worse of any logger, on stderr."""

    handler = logging.StreamHandler(sys.stderr)
    # a filter on the handler, not logger levels: a library imported later may reset its own level
    handler.addFilter(
        lambda record: record.levelno >= logging.WARNING or record.name.startswith(OUR_LOGGERS)
    )
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt=datefmt, handlers=[handler])
    # Hydra's "disabled" job logging (the shipped configs) disables every logger that exists when
    # it starts: those of the modules imported by then, ours included
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith(OUR_LOGGERS) and isinstance(logger, logging.Logger):
            logger.disabled = False


def run_command(prog: str, command: Callable[[], object]) -> int:
    """Runs ``command()``; returns the exit code: 0 when it ends, or :data:`INPUT_ERROR_EXIT` (2,
    argparse's code for a bad command line) when it raises an :class:`InputError`, printed on
    stderr as one line, ``<prog>: error: <message>``. Any other exception is a bug and keeps its
    traceback."""
    try:
        command()
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return INPUT_ERROR_EXIT
    return 0
