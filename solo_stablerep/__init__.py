"""StableRep for solo-learn.

Importing the package (or :mod:`solo_stablerep.losses`, or the data format) loads neither
solo-learn nor Lightning nor timm. The methods join solo-learn's registry
(``solo.methods.METHODS``) where solo-learn is needed: on ``import solo_stablerep.methods``, in
the entry point ``solo-stablerep-pretrain``, or by calling :func:`register_methods`.
"""

from solo_stablerep._solo import SoloLearnNotAvailable, check_solo_learn

__version__ = "0.1.0"


def register_methods() -> None:
    """Adds ``stablerep``, ``stablerep_pp`` and ``synclr`` to ``solo.methods.METHODS``; safe to call
    twice.

    Raises SoloLearnNotAvailable with install instructions if solo-learn is missing or old.
    """

    check_solo_learn()
    from solo_stablerep.methods import register

    register()


__all__ = ["SoloLearnNotAvailable", "check_solo_learn", "register_methods"]
