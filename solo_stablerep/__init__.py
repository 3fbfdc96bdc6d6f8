"""StableRep for solo-learn.

``import solo_stablerep`` registers this package's methods in ``solo.methods.METHODS`` when
solo-learn is importable, so solo-learn's own tools (and ``solo-stablerep-pretrain``) find
``method: stablerep``. The losses (:mod:`solo_stablerep.losses`) work without solo-learn.
"""

from solo_stablerep._solo import SoloLearnNotAvailable, check_solo_learn

__version__ = "0.1.0"


def register_methods() -> None:
    """Adds ``stablerep`` (and friends) to ``solo.methods.METHODS``; safe to call twice.

    Raises SoloLearnNotAvailable with install instructions if solo-learn is missing or old.
    """

    check_solo_learn()
    import solo.methods

    from solo_stablerep.methods import METHODS

    for name, method in METHODS.items():
        solo.methods.METHODS.setdefault(name, method)


try:
    check_solo_learn()
except SoloLearnNotAvailable:
    pass  # losses stay usable; register_methods() and the entry point report the problem
else:
    register_methods()
