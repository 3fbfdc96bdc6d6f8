"""The procedural backend: samples of one caption differ, and the caption is recoverable from the
image."""

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression

from data_gen.procedural import parse, render
from data_gen.settings import image_seed

COLOURS = ["white", "yellow", "cyan", "pink", "orange"]


def features(image):
    """Ink map (contrast to the border's colour), cropped to its bounding box, at 12x12
    (MNIST-style)."""
    gray = np.asarray(image.convert("L"), float)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = np.abs(gray - np.median(border))
    rows, cols = np.nonzero(ink > 0.5 * ink.max())
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    small = np.asarray(Image.fromarray(square).resize((12, 12), Image.BILINEAR))
    return (small / (small.max() + 1e-6)).ravel()


def test_samples_of_one_caption_differ_and_are_reproducible():
    caption = "a large red digit 7 on a dark background"
    images = [np.asarray(render(caption, image_seed(0, "x", k), 64), float) for k in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i] - images[j]).mean() > 3
    np.testing.assert_array_equal(
        np.asarray(render(caption, 123, 64)), np.asarray(render(caption, 123, 64))
    )


def test_digit_class_is_recoverable_by_a_linear_classifier():
    def dataset(seed_offset, per_class):
        x, y = [], []
        for digit in range(10):
            word = str(digit) if digit % 2 else ["zero", "two", "four", "six", "eight"][digit // 2]
            for i in range(per_class):
                caption = f"a {COLOURS[i % len(COLOURS)]} digit {word} on a dark background"
                x.append(features(render(caption, seed_offset + 1000 * digit + i, 32)))
                y.append(digit)
        return np.array(x), np.array(y)

    x_train, y_train = dataset(0, 40)
    x_test, y_test = dataset(10**6, 15)
    accuracy = LogisticRegression(max_iter=2000).fit(x_train, y_train).score(x_test, y_test)
    assert accuracy > 0.8, accuracy  # chance is 0.1


def test_colour_size_and_position_follow_the_caption():
    red = np.asarray(render("a large red square on a white background", 1, 64), float)
    blue = np.asarray(render("a large blue square on a white background", 1, 64), float)
    centre = (slice(24, 40), slice(24, 40))
    assert red[centre][..., 0].mean() > red[centre][..., 2].mean() + 80
    assert blue[centre][..., 2].mean() > blue[centre][..., 0].mean() + 80

    def ink(caption, seed):
        gray = np.asarray(render(caption, seed, 64).convert("L"), float)
        return gray < 128  # dark object on a light background

    small = np.mean([ink("a tiny black circle on a light background", s).mean() for s in range(5)])
    large = np.mean([ink("a huge black circle on a light background", s).mean() for s in range(5)])
    assert large > 3 * small
    left = np.mean(
        [
            np.nonzero(ink("a small black star on the left on a light background", s))[1].mean()
            for s in range(5)
        ]
    )
    right = np.mean(
        [
            np.nonzero(ink("a small black star on the right on a light background", s))[1].mean()
            for s in range(5)
        ]
    )
    assert left < 28 < 36 < right


def test_parser_reads_objects_words_and_background():
    scene = parse("a small blue circle on the left and a large digit seven on a dark background")
    assert scene.background == "dark"
    assert [(t.shape, t.digit) for t in scene.things] == [("circle", None), (None, 7)]
    assert scene.things[0].offset[0] < 0 and scene.things[1].size > scene.things[0].size


def test_contact_sheet_shows_at_most_max_columns_images_per_caption(tmp_path):
    from data_gen.runner import contact_sheet

    rows = []
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        images = []
        for k in range(30):
            path = tmp_path / f"c{c}_{k:02d}.png"
            Image.new("RGB", (8, 8), colour).save(path)
            images.append(path)
        rows.append((f"caption {c}", images))
    sheet = np.asarray(contact_sheet(rows, thumb=10, text_width=20, max_columns=4))
    assert sheet.shape == (2 * 14, 20 + 4 * 14, 3)
    # row 0 shows caption 0's (red) images, row 1 caption 1's (blue)
    assert tuple(sheet[5, 20 + 5]) == (255, 0, 0) and tuple(sheet[14 + 5, 20 + 3 * 14 + 5]) == (
        0,
        0,
        255,
    )
