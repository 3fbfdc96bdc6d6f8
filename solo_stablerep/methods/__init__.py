"""solo-learn methods added by solo-stablerep (needs solo-learn at commit 9187ea3)."""

from solo_stablerep._solo import check_solo_learn

check_solo_learn()

from solo_stablerep.methods.stablerep import StableRep  # noqa: E402

METHODS = {"stablerep": StableRep}

__all__ = ["METHODS", "StableRep"]
