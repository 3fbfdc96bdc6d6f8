"""Side-by-side evaluation of solo-learn checkpoints by the papers' protocols.

- :mod:`.probes`: the linear-transfer, weighted-kNN and few-shot probes of extracted features
  (numpy, torch and scipy only: importable without solo-learn);
- :mod:`.logistic`: the L-BFGS logistic regression of the linear probe;
- :mod:`.metrics`: top-1, mean per-class accuracy and 11-point mAP.

Importing this package loads none of them.
"""
