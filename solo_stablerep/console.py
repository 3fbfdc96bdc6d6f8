"""What the command-line tools share (standard library only): where log records go, and how an
input error ends a command.

Library modules log through ``logging.getLogger(__name__)`` and never configure output; each entry
point calls :func:`configure_logging` once. Only this project's INFO lines are shown, with
everyone's warnings: torch.distributed, Hydra and timm log at INFO too, and would bury them.
Each entry point runs its work through :func:`run_command`: bad input is one line and exit code 2,
options included: each parses them with :class:`ArgumentParser` and the ``type=`` functions below
(:func:`positive_int`, ...: the ranges of :mod:`solo_stablerep.rules`), and checks its output
paths with :func:`check_output_folder` / :func:`check_output_file` before any work.
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from solo_stablerep.errors import INPUT_ERROR_EXIT, InputError
from solo_stablerep.rules import Rule, greater_than, integer

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


# --- options: argparse types and the one-line parser ------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown option, a value its ``type=`` refuses) raise an
    :class:`InputError`, so that :func:`run_command` prints them as one line, exit code 2, as
    every other input error (argparse's own prints the whole usage first, and exits). Parse
    inside ``run_command``. ``--help`` still shows the usage."""

    def error(self, message: str):
        raise InputError(f"{message} (see {self.prog} --help)")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def int_option(rule: Rule) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number that ``rule`` (an :func:`~solo_stablerep.rules.integer`
    rule) accepts, or argparse's error naming the range."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if not rule.accepts(value):
            bounds = rule.text.removeprefix("be an integer")
            raise argparse.ArgumentTypeError(f"got {value}; give a whole number{bounds}")
        return value

    return parse


def float_option(rule: Rule) -> Callable[[str], float]:
    """An argparse ``type=``: a number that ``rule`` accepts (nan and inf never), or argparse's
    error naming the range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not rule.accepts(value):
            bounds = rule.text.removeprefix("be ")
            raise argparse.ArgumentTypeError(f"got {text}; give a finite number {bounds}")
        return value

    return parse


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number >= ``minimum`` (and <= ``maximum``)."""
    return int_option(integer(minimum, maximum))


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0, 2**32 - 1)  # what numpy's and Lightning's seeding accept
positive_float = float_option(greater_than(0))


# --- output paths ---------------------------------------------------------------------------


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be made or written in, or None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail
            return f"{existing} is a broken link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_output_folder(path: Path, option: str = "--output") -> None:
    """Raises a one-line :class:`InputError` unless ``path`` is a folder, or can be made one, that
    this process may write in: checked before any work, so that no work is lost at the end."""
    problem = _folder_problem(Path(path))
    if problem:
        raise InputError(f"{option} {path}: {problem}: give another folder")


def check_output_file(path: Path, option: str, overwrite: bool = False) -> None:
    """Raises a one-line :class:`InputError` unless ``path`` can be written as a file: not a folder,
    its folder can be made and written in, and an existing file only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder: give a file name in it")
    problem = _folder_problem(path.parent)
    if problem:
        raise InputError(f"{option} {path}: {problem}: give another path")
    if path.exists() and not overwrite:
        raise InputError(f"{option} {path}: exists; pass --overwrite to replace it")
