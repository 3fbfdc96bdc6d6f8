"""``stablerep-demo``: the whole StableRep idea, end to end, on a laptop CPU in minutes.

1. writes captions naming light handwritten-looking digits on dark backgrounds, with colour, size
   and style words (label = the digit) — :mod:`~solo_stablerep.demo.captions`;
2. renders many images per caption with data_gen's weights-free procedural backend, plus a
   per-image view of them for the methods that know no captions —
   :mod:`~solo_stablerep.demo.dataset`;
3. pretrains StableRep, SimCLR and, as the supervised ceiling, SupCon on the digit labels (BYOL on
   request) from the configs in
   ``scripts/pretrain/synthetic/`` through :func:`solo_stablerep.pretrain.run_pretrain`, shrunk by
   command-line-style overrides only (resnet18 at 32 px, tiny projector, a few hundred steps, and
   augmentations suited to digits: no mirroring, whole-digit crops, the probe's 8 px resolution),
   every method with the same crops, steps and effective lr — :mod:`~solo_stablerep.demo.runs`;
4. probes the frozen backbones on REAL images: scikit-learn's handwritten digits, each at a random
   size and place, with :mod:`solo_stablerep.eval.probes` (weighted kNN, the linear-transfer
   protocol, 5-way 5-shot episodes), a randomly initialised backbone as the floor —
   :mod:`~solo_stablerep.demo.digits`;
5. writes ``results.md`` / ``results.json`` (after every seed), a plot of each method's accuracy
   minus the floor's, the contact sheet and the configs used —
   :mod:`~solo_stablerep.demo.report`.

:func:`solo_stablerep.demo.pipeline.run_demo` runs all of it; :mod:`~solo_stablerep.demo.cli` is the
command line. The procedural images are toys: the numbers say whether the pipeline works and how
the methods compare on this toy, not how StableRep does on Stable Diffusion images.
"""
