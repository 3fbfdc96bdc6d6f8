"""data_gen's error for bad input or state, in a module of its own: every other module raises it,
and none has to import another (settings, backends) just for it."""

from solo_stablerep.errors import InputError


class DataGenError(InputError):
    """Bad input or state; the message is one line naming the culprit (the CLI prints only it)."""
