"""Data for StableRep: the synthetic multi-view data set, in three layouts, two loaders.

- formats (standard library and numpy only; ``data_gen`` writes them): :mod:`.manifest`
  (``manifest.jsonl``), :mod:`.index` (the caption index, memory-mapped), :mod:`.shards` (tar
  shards and their tar indexes);
- :mod:`.readers`: the reader protocol over the three layouts, "n readable images of item i";
- :mod:`.config`: ``data.synthetic`` defaults and checks, the typed :class:`.config.DataConfig`,
  and :func:`.config.open_reader`, the one place a reader is chosen;
- :mod:`.loaders`: the PyTorch loader and the one place a loader is chosen; :mod:`.dali`: the DALI
  loader; :mod:`.transforms`: solo-learn's augmentations and the downsample augmentation.
"""
