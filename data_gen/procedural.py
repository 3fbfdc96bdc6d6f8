"""Weights-free procedural renderer that draws what a caption names: NOT Stable Diffusion.

It understands a small vocabulary — digits 0-9 (as numerals or words), shapes (circle, square,
triangle, star, hexagon, pentagon, diamond, ring, cross, rectangle), colours, sizes (tiny … huge),
positions (left/right/top/bottom/centre and corners) and backgrounds ("on a dark background", "on a
blue background") — and several objects joined by "and" or commas. Each seed draws a new sample:
pose (rotation, slant, aspect), scale, position jitter, colour jitter, background gradient and
noise, and for digits a handwriting-like glyph (one of a few stroke variants per digit, jittered
control points, varied stroke width). Images of one caption therefore differ the way diffusion
samples do, while the caption stays recoverable from the image.

Its purpose is to run the whole StableRep pipeline (generation → manifest → training → linear probe)
on a CPU in minutes. Images are synthetic toys: results on them say nothing about StableRep on
Stable Diffusion images. Words it does not know are ignored; a caption with no known object gets a
shape and colour chosen from the caption's hash, so distinct captions still look distinct.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (245, 120, 180),
    "cyan": (40, 210, 220),
    "brown": (130, 80, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}
SIZES = {"tiny": 0.25, "small": 0.35, "medium": 0.5, "big": 0.7, "large": 0.7, "huge": 0.85}
SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "pentagon",
    "diamond",
    "ring",
    "cross",
    "rectangle",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Offsets of the object's centre from the image centre, as fractions of the image side.
POSITIONS = {
    "left": (-0.25, 0.0),
    "right": (0.25, 0.0),
    "top": (0.0, -0.25),
    "upper": (0.0, -0.25),
    "bottom": (0.0, 0.25),
    "lower": (0.0, 0.25),
    "center": (0.0, 0.0),
    "centre": (0.0, 0.0),
    "middle": (0.0, 0.0),
}


@dataclass
class Thing:
    digit: int | None = None
    shape: str | None = None
    colour: tuple | None = None
    size: float | None = None
    offset: tuple | None = None


@dataclass
class Scene:
    things: list
    background: str | tuple | None  # "dark", "light", an RGB colour, or None (random)


def parse(caption: str) -> Scene:
    text = caption.lower()
    background = None
    match = re.search(r"\bon (?:a |an |the )?((?:[a-z]+ ){0,2})background\b", text)
    if match:
        words = match.group(1).split()
        background = next((COLOURS[w] for w in words if w in COLOURS), None)
        background = background or next(
            (w for w in words if w in ("dark", "light", "bright")), None
        )
        text = text[: match.start()] + text[match.end() :]
    things = []
    for part in re.split(r",|\band\b|\bwith\b", text):
        words = re.findall(r"[a-z]+|\d+", part)
        thing = Thing()
        for word in words:
            if word in COLOURS:
                thing.colour = COLOURS[word]
            elif word in SIZES:
                thing.size = SIZES[word]
            elif word in POSITIONS:
                dx, dy = POSITIONS[word]
                old = thing.offset or (0.0, 0.0)
                thing.offset = (old[0] + dx, old[1] + dy)
            elif word.rstrip("s") in SHAPES or word in ("oval", "ellipse", "dot"):
                thing.shape = {"oval": "circle", "ellipse": "circle", "dot": "circle"}.get(
                    word, word.rstrip("s")
                )
            elif word.isdigit() and len(word) == 1:
                thing.digit = int(word)
            elif word in NUMBER_WORDS and (thing.digit is None):
                thing.digit = NUMBER_WORDS.index(word)
        if thing.digit is not None or thing.shape is not None:
            things.append(thing)
    if (
        not things
    ):  # unknown vocabulary: a look fixed by the caption, so captions stay distinguishable
        h = int(hashlib.sha1(caption.encode()).hexdigest(), 16)
        things = [
            Thing(
                shape=SHAPES[h % len(SHAPES)],
                colour=list(COLOURS.values())[(h >> 8) % len(COLOURS)],
            )
        ]
        logger.debug(
            "%r names no digit or shape: drawing a %s chosen by its hash", caption, things[0].shape
        )
    return Scene(things, background)


# ---- digit strokes: each variant is a list of strokes, each a list of control points (unit box)
def _arc(cx, cy, rx, ry, start, end, n=10):
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(start, end, n)
    ]


DIGITS = {
    0: [[_arc(0.5, 0.5, 0.3, 0.45, -90, 270, 14)], [_arc(0.5, 0.5, 0.26, 0.45, -100, 265, 14)]],
    1: [
        [[(0.5, 0.05), (0.5, 0.95)]],
        [[(0.3, 0.25), (0.52, 0.05), (0.5, 0.95)]],
        [[(0.32, 0.22), (0.52, 0.05), (0.5, 0.95)], [(0.3, 0.95), (0.7, 0.95)]],
    ],
    2: [
        [_arc(0.5, 0.3, 0.3, 0.25, 190, 360, 8) + [(0.75, 0.45), (0.2, 0.95), (0.82, 0.95)]],
        [_arc(0.5, 0.3, 0.3, 0.25, 200, 380, 8) + [(0.2, 0.95), (0.3, 0.85), (0.82, 0.92)]],
    ],
    3: [
        [_arc(0.5, 0.28, 0.28, 0.23, 200, 450, 10) + _arc(0.5, 0.73, 0.3, 0.23, 270, 520, 10)],
        [[(0.2, 0.08), (0.78, 0.08), (0.45, 0.45)] + _arc(0.5, 0.7, 0.3, 0.25, 280, 510, 10)],
    ],
    4: [
        [[(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)]],
        [[(0.3, 0.05), (0.2, 0.6), (0.85, 0.6)], [(0.65, 0.3), (0.65, 0.95)]],
    ],
    5: [
        [[(0.75, 0.06), (0.3, 0.06), (0.26, 0.45)] + _arc(0.5, 0.68, 0.3, 0.27, 240, 500, 10)],
        [
            [(0.3, 0.08), (0.26, 0.45)] + _arc(0.5, 0.68, 0.3, 0.27, 240, 500, 10),
            [(0.3, 0.08), (0.78, 0.06)],
        ],
    ],
    6: [
        [[(0.7, 0.05), (0.45, 0.2), (0.27, 0.45)] + _arc(0.5, 0.7, 0.26, 0.24, 180, 540, 14)],
        [[(0.62, 0.05), (0.3, 0.45)] + _arc(0.5, 0.72, 0.24, 0.22, 200, 560, 14)],
    ],
    7: [
        [[(0.2, 0.06), (0.8, 0.06), (0.4, 0.95)]],
        [[(0.2, 0.12), (0.2, 0.06), (0.8, 0.06), (0.45, 0.95)], [(0.35, 0.5), (0.72, 0.5)]],
    ],
    8: [
        [_arc(0.5, 0.27, 0.22, 0.22, 90, 450, 12), _arc(0.5, 0.72, 0.28, 0.24, -90, 270, 12)],
        [_arc(0.5, 0.28, 0.2, 0.21, 60, 420, 12) + _arc(0.5, 0.72, 0.27, 0.24, 240, -120, 12)],
    ],
    9: [
        [_arc(0.5, 0.3, 0.26, 0.24, 0, 360, 14) + [(0.76, 0.3), (0.72, 0.95)]],
        [_arc(0.5, 0.3, 0.25, 0.23, 10, 370, 14) + [(0.74, 0.5), (0.65, 0.8), (0.4, 0.95)]],
    ],
}


def _smooth(points: np.ndarray, per_segment: int = 6) -> np.ndarray:
    """Catmull-Rom through the control points: pen-like curves instead of kinks everywhere."""
    if len(points) < 3:
        return points
    padded = np.vstack([points[0], points, points[-1]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    return np.vstack(out + [points[-1:]])


def _draw_digit(draw, rng, digit, centre, side, colour):
    variant = DIGITS[digit][rng.integers(len(DIGITS[digit]))]
    slant, angle = rng.uniform(-0.35, 0.3), math.radians(rng.uniform(-12, 12))
    aspect = rng.uniform(0.75, 1.2)
    width = max(1, int(side * rng.uniform(0.07, 0.16)))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for stroke in variant:
        points = np.array(stroke, dtype=float) + rng.normal(0, 0.025, (len(stroke), 2))
        points = _smooth(points) - 0.5
        points[:, 0] = (points[:, 0] - slant * points[:, 1]) * aspect  # shear: italic-like slant
        points = points @ rotation.T * side + centre
        xy = [tuple(p) for p in points]
        draw.line(xy, fill=colour, width=width, joint="curve")
        for x, y in (xy[0], xy[-1]):  # round pen caps
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=colour)


def _draw_shape(draw, rng, shape, centre, side, colour):
    r = side / 2
    turn = rng.uniform(0, 2 * math.pi)
    cx, cy = centre

    def polygon(n, radii=(1.0,), squash=1.0):
        pts = []
        for i in range(n * len(radii)):
            a = turn + 2 * math.pi * i / (n * len(radii))
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * squash * math.sin(a)))
        return pts

    if shape == "circle":
        squash = rng.uniform(0.85, 1.0)
        draw.ellipse((cx - r, cy - r * squash, cx + r, cy + r * squash), fill=colour)
    elif shape == "ring":
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r),
            outline=colour,
            width=max(1, int(r * rng.uniform(0.2, 0.35))),
        )
    elif shape == "cross":
        width = max(1, int(r * rng.uniform(0.3, 0.45)))
        for a in (turn, turn + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=width)
    else:
        n, radii, squash = {
            "square": (4, (1.0,), 1.0),
            "triangle": (3, (1.0,), 1.0),
            "star": (5, (1.0, 0.45), 1.0),
            "hexagon": (6, (1.0,), 1.0),
            "pentagon": (5, (1.0,), 1.0),
            "diamond": (4, (1.0,), 0.6),
            "rectangle": (4, (1.0,), 0.55),
        }[shape]
        draw.polygon(polygon(n, radii, squash), fill=colour)


def _jitter(colour, rng, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(background, object_colours, rng):
    if isinstance(background, tuple):
        return _jitter(background, rng)
    if background == "dark":
        return tuple(int(v) for v in rng.integers(0, 60, 3))
    if background in ("light", "bright"):
        return tuple(int(v) for v in rng.integers(195, 256, 3))
    # Random, but far from the objects' brightness so they stay visible.
    brightness = np.mean([np.mean(c) for c in object_colours]) if object_colours else 128
    base = rng.integers(0, 70, 3) if brightness > 128 else rng.integers(185, 256, 3)
    return tuple(int(v) for v in base)


def render(caption: str, seed: int, size: int) -> Image.Image:
    """One sample of `caption` at `size` px; the same (caption, seed, size) gives the same image."""
    rng = np.random.default_rng(seed)
    scene = parse(caption)
    scale = 2  # draw at 2x, then downsample: anti-aliased edges
    side = size * scale
    colours = [
        thing.colour or tuple(int(v) for v in rng.integers(0, 256, 3)) for thing in scene.things
    ]
    bg = np.array(
        _background(
            scene.background,
            [c for t, c in zip(scene.things, colours, strict=True) if t.colour],
            rng,
        ),
        float,
    )
    # Background: a linear gradient between two nearby colours, in a random direction.
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (
        np.cos(direction) * np.linspace(-1, 1, side)[None, :]
        + np.sin(direction) * np.linspace(-1, 1, side)[:, None]
    )
    other = np.clip(bg + rng.normal(0, 25, 3), 0, 255)
    pixels = bg + (other - bg) * (0.5 + 0.5 * ramp[..., None] * rng.uniform(0.3, 1.0))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    many = len(scene.things) > 1
    for i, (thing, colour) in enumerate(zip(scene.things, colours, strict=True)):
        colour = _jitter(colour, rng)
        extent = (thing.size or rng.uniform(0.35, 0.65) / (1.5 if many else 1)) * rng.uniform(
            0.85, 1.15
        )
        if thing.offset is not None:
            offset = np.array(thing.offset)
        elif many:  # spread unpositioned objects along a line so they do not overlap
            offset = np.array([(i + 0.5) / len(scene.things) - 0.5, 0.0])
        else:
            offset = np.zeros(2)
        room = max(0.0, 0.5 - extent / 2) * 0.5
        offset = np.clip(offset + rng.uniform(-room, room, 2), -0.5 + extent / 2, 0.5 - extent / 2)
        centre = (0.5 + offset) * side
        if thing.digit is not None:
            _draw_digit(draw, rng, thing.digit, centre, extent * side, colour)
        else:
            _draw_shape(draw, rng, thing.shape, centre, extent * side, colour)
    image = image.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * size / 64))
    noisy = np.asarray(image, float) + rng.normal(0, rng.uniform(2, 10), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
