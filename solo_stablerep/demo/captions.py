"""The demo's captions: light handwritten-looking digits on dark backgrounds, label = the digit.

The look of the real probe images (scikit-learn's 8×8 scans), as the paper's captions describe the
kind of images its probes hold. The digit's name comes from the renderer's own vocabulary
(:data:`data_gen.procedural.NUMBER_WORDS`), so every caption names a digit the renderer draws.
"""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

from data_gen.procedural import NUMBER_WORDS

# Style words only flavour the text: the renderer's per-seed variation gives each image its own
# slant, stroke width, pose and noise. Light ink on a dark ground, digits filling most of the frame,
# like sklearn's scans: with small, dark-on-light or colourful digits even a supervised classifier
# trained on the images fell below the floor (README).
COLOURS = ("white", "yellow", "cyan", "pink", "orange", "gray")
SIZES = ("big", "huge")
STYLES = ("handwritten", "bold", "thin", "slanted", "neat", "scribbled")
BACKGROUNDS = ("on a dark background", "on a black background")
# (colour, size, style, background, digit as a word). Measured: orange "big" digits on a "dark"
# ground left StableRep below the floor where this passed.
SCAN_LIKE = ("white", "huge", "handwritten", "on a black background", False)
# distinct descriptions of a digit: colour x size x style x background x digit or word
MAX_CAPTIONS_PER_CLASS = len(COLOURS) * len(SIZES) * len(STYLES) * len(BACKGROUNDS) * 2


def write_captions(path: Path, captions_per_class: int, seed: int) -> int:
    """A CSV (caption, label) of distinct captions, ``captions_per_class`` per digit; returns the
    count.

    Every digit gets the same ``captions_per_class`` descriptions (colour, size, style, background):
    words that differ between digits would let a method tell the digits apart by colour alone. The
    first is the closest to the scans (:data:`SCAN_LIKE`), the others are drawn at random.
    """

    rng = random.Random(seed)
    others = [
        c
        for c in itertools.product(COLOURS, SIZES, STYLES, BACKGROUNDS, (False, True))
        if c != SCAN_LIKE
    ]
    rows = []
    for colour, size, style, background, as_word in [
        SCAN_LIKE,
        *rng.sample(others, captions_per_class - 1),
    ]:
        for digit in range(10):
            name = f"number {NUMBER_WORDS[digit]}" if as_word else f"digit {digit}"
            rows.append((f"a {size} {style} {colour} {name} {background}", digit))
    rng.shuffle(rows)  # mixed digits in the contact sheet's first rows
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", "label"])
        writer.writerows(rows)
    return len(rows)
