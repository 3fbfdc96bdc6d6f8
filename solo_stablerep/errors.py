"""The error classes for bad input or configuration, all of them.

Everything a user can get wrong - a config key, a data set on disk, a captions file, a command-line
option - raises a subclass of :class:`InputError` with a one-line message that names the culprit
(the key, or the file, line and caption); the subclass says which part found it. The entry points
(``solo-stablerep-pretrain``, ``stablerep-generate``, ``stablerep-demo``, ``solo-stablerep-eval``)
catch this class alone through :func:`solo_stablerep.console.run_command`, print that line and exit
with :data:`INPUT_ERROR_EXIT`; any other exception is a bug and keeps its traceback. Standard
library only: ``data_gen`` and the on-disk format modules import it on machines where nobody trains.
"""

INPUT_ERROR_EXIT = 2  # argparse's code for a bad command line


def first_line(error: BaseException) -> str:
    """An exception's first non-blank line, or its type's name when it has no message: the reason
    a decoder, loader or library gives, quoted in a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class InputError(ValueError):
    """Bad input or configuration, reported to the user as one line.

    A ``ValueError`` too, so that code validating values can be caught the usual way; the entry
    points catch only this class, never every ``ValueError``.

    An error raised in a DataLoader worker reaches the training process as
    ``SubClass("Caught SubClass in DataLoader worker process N.\nOriginal Traceback ...")`` (PyTorch
    rebuilds it from the worker's whole traceback): the constructor keeps only the one-line message
    from it, plus where it happened, for every subclass.
    """

    def __init__(self, message: str = ""):
        caught = f"Caught {type(self).__name__} in "
        if isinstance(message, str) and message.startswith(caught) and "\n" in message:
            where = message.split(".\n", 1)[0][len(caught) :]
            original = message.rstrip().rsplit("\n", 1)[-1]
            message = f"{original.split(': ', 1)[-1]} (in {where})"
        super().__init__(message)


class ManifestError(InputError):
    """A synthetic data set's manifest (or a file it names) is invalid; the message is one line."""


class SyntheticDataError(InputError):
    """A synthetic data set or its config is unusable; the message is one line naming the culprit
    (also when raised in a DataLoader worker: see :class:`InputError`)."""


class ShardFormatError(InputError):
    """A shard folder, tar or sample is invalid; the message is one line naming the shard and
    sample."""


class ShardDataError(InputError):
    """Shards unusable for training; the message is one line naming the shard and the sample."""


class DataGenError(InputError):
    """``stablerep-generate``: bad input or state; the message is one line naming the culprit."""


class EvalError(InputError):
    """A checkpoint, data set, cache entry or probe setting the evaluation cannot use; the message
    is one line naming it and what to do."""


class DemoError(InputError):
    """``stablerep-demo``: bad options or missing inputs; the message is one line."""


class MissingExtraError(InputError):
    """A feature switched on in the config needs an optional extra that is not installed; the
    message is one line naming the key, the extra and its install command."""
