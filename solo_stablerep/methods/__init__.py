"""solo-learn methods added by solo-stablerep (needs solo-learn at commit 9187ea3)."""

from solo_stablerep._solo import check_solo_learn

check_solo_learn()

from solo_stablerep.methods.stablerep import StableRep  # noqa: E402
from solo_stablerep.methods.stablerep_pp import StableRepPP  # noqa: E402

# StableRep++ is registered as "stablerep_pp": solo-learn's method names are snake-case
# identifiers, and a "+" would be read as Hydra's add-key syntax on the command line.
METHODS = {"stablerep": StableRep, "stablerep_pp": StableRepPP}

__all__ = ["METHODS", "StableRep", "StableRepPP"]
