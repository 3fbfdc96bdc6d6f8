"""Data for StableRep: the synthetic multi-view data set (on-disk format in :mod:`.manifest`).

The names below are imported lazily, so that :mod:`.manifest` (used by ``data_gen/``) works without
solo-learn installed.
"""

_SYNTHETIC_NAMES = (
    "SyntheticDataError",
    "SyntheticMultiViewDataset",
    "add_and_assert_synthetic_cfg",
    "prepare_synthetic_train_data",
)

__all__ = list(_SYNTHETIC_NAMES)


def __getattr__(name):
    if name in _SYNTHETIC_NAMES:
        from solo_stablerep.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
