"""The evaluation's error for bad input (standard library only)."""

from solo_stablerep.errors import InputError


class EvalError(InputError):
    """A checkpoint, data set, cache entry or probe setting the evaluation cannot use; the message
    is one line naming it and what to do."""
