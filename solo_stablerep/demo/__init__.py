"""``stablerep-demo``: the whole StableRep idea, end to end, on a laptop CPU in minutes.

1. writes captions naming light handwritten-looking digits on dark backgrounds, with colour, size
   and style words (label = the digit) — :mod:`~solo_stablerep.demo.captions`;
2. renders many images per caption with data_gen's weights-free procedural backend, plus a
   per-image view of them for the methods that know no captions — :mod:`~solo_stablerep.demo.dataset`;
3. pretrains StableRep and the baselines (SimCLR, BYOL; SupCon on request) from the configs in
   ``scripts/pretrain/synthetic/`` through :func:`solo_stablerep.pretrain.run_pretrain`, shrunk by
   command-line-style overrides only (resnet18 at 32 px, tiny projector, a few hundred steps, and
   augmentations suited to digits: no mirroring, whole-digit crops, the probe's 8 px resolution),
   every method with the same crops, steps and effective lr — :mod:`~solo_stablerep.demo.runs`;
4. probes the frozen backbones on REAL images: scikit-learn's handwritten digits (kNN, logistic
   regression on all labels and on 5 labels per class), with a randomly initialised backbone as the
   floor — :mod:`~solo_stablerep.demo.probes`;
5. writes ``results.md`` / ``results.json``, a plot, the contact sheet and the configs used —
   :mod:`~solo_stablerep.demo.report`.

:func:`solo_stablerep.demo.pipeline.run_demo` runs all of it; :mod:`~solo_stablerep.demo.cli` is the
command line. The procedural images are toys: the numbers say whether the pipeline works and how
the methods compare on this toy, not how StableRep does on Stable Diffusion images.
"""
