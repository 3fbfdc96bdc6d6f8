"""Data for StableRep: the synthetic multi-view data set in three layouts (manifest, authors' CSV,
tar shards), read through one reader protocol (:mod:`.readers`) by two loaders (:mod:`.loaders`,
:mod:`.dali`); docs/architecture.md maps the modules."""
