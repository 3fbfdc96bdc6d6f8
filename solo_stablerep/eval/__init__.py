"""Side-by-side evaluation of solo-learn checkpoints by the papers' protocols
(``solo-stablerep-eval``; docs/evaluation.md).

- :mod:`.probes`: the linear-transfer, weighted-kNN and few-shot probes of extracted features
  (numpy, torch and scipy only: importable without solo-learn);
- :mod:`.logistic`: the L-BFGS logistic regression of the linear probe; :mod:`.metrics`: top-1,
  mean per-class accuracy and 11-point mAP;
- :mod:`.backbone`: a checkpoint's backbone rebuilt from its saved config, or ``random:<name>``;
  :mod:`.export`: its weights for timm/torchvision;
- :mod:`.datasets`: digits, image folders and torchvision's fine-grained sets from local disk;
- :mod:`.cache` and :mod:`.features`: features extracted once, kept as memory-mapped files;
- :mod:`.compare`, :mod:`.report`, :mod:`.cli`: every model × data set × probe, and the outputs.

Importing this package loads none of them.
"""
