"""Data for StableRep: the synthetic multi-view data set.

Layout of this package:

- :mod:`.manifest`: on-disk format v1 (``manifest.jsonl``), reading and writing;
- :mod:`.index`: :class:`CaptionIndex`, the captions in memory-mapped arrays, built once per source;
- :mod:`.config`: ``data.synthetic`` defaults and checks, and the index of a cfg;
- :mod:`.sampling`: which images of a caption an item uses, and the views' order;
- :mod:`.transforms`: solo-learn's augmentation pipelines (built once for every loader) and the
  downsample augmentation;
- :mod:`.synthetic`: the PyTorch loader; :mod:`.synthetic_dali`: the DALI loader.

``manifest`` and ``index`` need only the standard library and numpy (``data_gen`` uses them);
the names below that need solo-learn are imported on first use.
"""

from solo_stablerep.data.index import CaptionIndex
from solo_stablerep.errors import SyntheticDataError

_LAZY = {
    "add_and_assert_synthetic_cfg": "solo_stablerep.data.config",
    "load_caption_index": "solo_stablerep.data.config",
    "SyntheticMultiViewDataset": "solo_stablerep.data.synthetic",
    "prepare_synthetic_train_data": "solo_stablerep.data.synthetic",
    "synthetic_callbacks": "solo_stablerep.data.synthetic",
}

__all__ = ["CaptionIndex", "SyntheticDataError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
