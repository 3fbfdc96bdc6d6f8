"""solo-learn methods added by solo-stablerep (needs solo-learn at commit 9187ea3).

Importing this package adds them to solo-learn's registry ``solo.methods.METHODS``.
"""

from solo_stablerep._solo import check_solo_learn

check_solo_learn()

import solo.methods  # noqa: E402

from solo_stablerep._solo_compat import apply as apply_solo_repairs  # noqa: E402
from solo_stablerep.methods.needs import EntryPointNeeds  # noqa: E402
from solo_stablerep.methods.stablerep import StableRep  # noqa: E402
from solo_stablerep.methods.stablerep_pp import StableRepPP  # noqa: E402
from solo_stablerep.methods.synclr import SynCLR  # noqa: E402

# StableRep++ is registered as "stablerep_pp": solo-learn's method names are snake-case
# identifiers, and a "+" would be read as Hydra's add-key syntax on the command line.
METHODS = {"stablerep": StableRep, "stablerep_pp": StableRepPP, "synclr": SynCLR}


def register() -> None:
    """Adds :data:`METHODS` to ``solo.methods.METHODS`` (a name already there is kept), and repairs
    the solo-learn features that the installed libraries break (:mod:`solo_stablerep._solo_compat`)
    for every method."""
    apply_solo_repairs()
    for name, method in METHODS.items():
        solo.methods.METHODS.setdefault(name, method)


register()

__all__ = ["METHODS", "EntryPointNeeds", "StableRep", "StableRepPP", "SynCLR", "register"]
