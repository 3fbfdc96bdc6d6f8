"""Repairs to solo-learn 1.0.6 (commit 9187ea3) for the libraries this package runs it on.

solo-learn 1.0.6 pins ``lightning==2.1.2`` and ``torchmetrics>=0.6,<0.12``; this package runs it
on lightning 2.6 and torchmetrics 1.x (``pyproject.toml``). Every solo-learn feature that these
newer versions break is repaired here, in this one module, and nowhere else; docs/pretraining.md
lists the features and which of them needed a repair. Each repair

* names the upstream line it stands in for and the versions it applies to;
* changes how that line's call lands, never solo-learn's code around it (nothing of solo-learn
  is copied here);
* is applied by :func:`apply`, once, when the methods of this package join solo-learn's registry
  (``solo_stablerep.methods``: the entry point ``solo-stablerep-pretrain``, and solo-learn's own
  scripts with ``import solo_stablerep.methods`` at their top), so it holds for solo-learn's methods
  (``simclr``, ...) as for ours.

Repairs:

1. **Online kNN** (``knn_eval.enabled=True``). ``solo/utils/knn.py``,
   ``WeightedKNNClassifier.__init__``::

       super().__init__(dist_sync_on_step=dist_sync_on_step, compute_on_step=False)

   ``compute_on_step=False`` asks ``forward`` (how ``BaseMethod`` feeds the memory banks, once per
   training and validation step) to only update the state. torchmetrics deprecated the argument in
   0.8, dropped it silently in 0.10 and 0.11 (inside solo-learn's pin), and rejects it from 1.0 on
   (``ValueError: Unexpected keyword arguments: compute_on_step``): every method with ``knn_eval``
   died in its constructor. Dropping it again would not do: torchmetrics' ``forward`` also copies
   the whole memory bank and computes the kNN accuracy of the batch at every step (quadratic in an
   epoch's size). The repair gives the argument its meaning back: :class:`_ComputeOnStepMetric`
   takes it and, when False, makes ``forward`` an ``update``; it sits between
   ``WeightedKNNClassifier`` and ``Metric`` in the class order of :class:`WeightedKNNClassifier`,
   a subclass that solo-learn's modules use in place of theirs. The accuracy is computed by
   solo-learn's ``WeightedKNNClassifier.compute``, unchanged. Applied for torchmetrics >= 1.0.
"""

from importlib import metadata
from typing import Any

import solo.methods.base
import solo.utils.knn
from torchmetrics import Metric


class _ComputeOnStepMetric(Metric):
    """``Metric`` with torchmetrics < 0.10's ``compute_on_step`` argument: False makes ``forward``
    update the state and return None, without computing on the batch."""

    def __init__(self, compute_on_step: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self._update_only_forward = not compute_on_step

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._update_only_forward:
            return super().forward(*args, **kwargs)
        self.update(*args, **kwargs)
        return None


class WeightedKNNClassifier(solo.utils.knn.WeightedKNNClassifier, _ComputeOnStepMetric):
    """solo-learn's ``WeightedKNNClassifier`` (repair 1): its ``super().__init__(...,
    compute_on_step=False)`` lands in :class:`_ComputeOnStepMetric`, next in the class order."""


def _repair_knn() -> None:
    """Repair 1: the names solo-learn builds its kNN classifier by, ``BaseMethod``'s (online kNN)
    and ``solo.utils.knn``'s (main_knn.py imports it from there)."""
    solo.utils.knn.WeightedKNNClassifier = WeightedKNNClassifier
    solo.methods.base.WeightedKNNClassifier = WeightedKNNClassifier


def apply() -> None:
    """Applies every repair that the installed versions need; safe to call twice."""
    if int(metadata.version("torchmetrics").split(".")[0]) >= 1:
        _repair_knn()
