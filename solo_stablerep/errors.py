"""The one error class for bad input or configuration.

Everything a user can get wrong - a config key, a data set on disk, a captions file, a command-line
option - raises a subclass of :class:`InputError` with a one-line message that names the culprit
(the key, or the file, line and caption). The entry points (``solo-stablerep-pretrain``,
``stablerep-generate``, ``stablerep-demo``) catch this class alone and print that line; any other
exception is a bug and keeps its traceback. Standard library only: ``data_gen`` and the on-disk
format modules import it on machines where nobody trains.
"""


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
