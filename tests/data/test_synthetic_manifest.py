"""Manifest format v1: round trip, atomic write, and one-line errors naming the culprit."""

import json

import pytest

from solo_stablerep.data.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    CaptionRecord,
    ManifestError,
    image_relpath,
    read_manifest,
    write_manifest,
)
from solo_stablerep.data.shards import image_member


def _records(n=3, labelled=False):
    return [
        CaptionRecord(
            f"id{c:04d}",
            f"caption {c}",
            c % 2 if labelled else None,
            [image_relpath(f"id{c:04d}", k, "jpg") for k in range(2)],
        )
        for c in range(n)
    ]


def _write_raw(root, header, rows):
    lines = [json.dumps(header)] + [json.dumps(r) for r in rows]
    (root / MANIFEST_NAME).write_text("\n".join(lines) + "\n")


def _header(**changes):
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_captions": 1,
        "class_names": None,
        "generator": {},
    }
    header.update(changes)
    return header


def _row(**changes):
    row = {
        "caption_id": "abcd",
        "caption": "a cat",
        "label": None,
        "images": ["images/ab/cd/abcd_00.png"],
    }
    row.update(changes)
    return row


def test_image_relpath_shards_by_id():
    assert image_relpath("a1b2c3", 7, "jpg") == "images/a1/b2/a1b2c3_07.jpg"
    assert image_relpath("ab", 0, ".png") == "images/ab/__/ab_00.png"


def test_round_trip_keeps_records_header_and_order(tmp_path):
    records = _records(3, labelled=True)
    path = write_manifest(tmp_path, records, class_names=["cat", "dog"], generator={"cfg": 2.0})
    header, read = read_manifest(tmp_path)
    assert path == tmp_path / MANIFEST_NAME
    assert read == records
    assert header["num_captions"] == 3 and header["class_names"] == ["cat", "dog"]
    assert header["generator"] == {"cfg": 2.0}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left behind


def test_write_replaces_atomically_and_rejects_bad_records(tmp_path):
    write_manifest(tmp_path, _records(2))
    bad = _records(1) + [CaptionRecord("x1", "c", None, ["/abs/x.jpg"])]
    with pytest.raises(ManifestError, match="absolute"):
        write_manifest(tmp_path, bad)
    # the failed write left the previous manifest intact and no temp file
    assert len(read_manifest(tmp_path)[1]) == 2
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]


@pytest.mark.parametrize(
    "header, rows, match",
    [
        (_header(version=2), [_row()], r"unknown version 2"),
        (_header(format="other"), [_row()], r"format is 'other'"),
        (_header(num_captions=2), [_row()], r"num_captions=2 but 1"),
        (_header(), [_row(images=["/etc/passwd.png"])], r":2 \(caption abcd\).*absolute"),
        (
            _header(),
            [_row(images=["images/../../x.png"])],
            r":2 \(caption abcd\).*escapes the root",
        ),
        (_header(), [_row(images=["a\\b.png"])], r"absolute"),
        (_header(), [_row(images=[])], r"non-empty list"),
        (_header(), [_row(extra=1)], r":2: columns"),
        (_header(), [{"caption_id": "abcd", "caption": "x", "images": ["a.png"]}], r":2: columns"),
        (_header(), [_row(label=3)], r"no class_names"),
        (
            _header(class_names=["a", "b"]),
            [_row(label=2)],
            r"label 2 is not an integer in \[0, 2\)",
        ),
        (_header(num_captions=2), [_row(), _row()], r":3: caption_id 'abcd' repeats line 2"),
        (_header(), [_row(caption_id="a/b")], r"caption_id 'a/b'"),
    ],
)
def test_invalid_manifest_raises_one_line_naming_culprit(tmp_path, header, rows, match):
    _write_raw(tmp_path, header, rows)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value)
    assert str(tmp_path / MANIFEST_NAME) in str(info.value)


def test_missing_manifest_and_invalid_json(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(_header()) + "\n{not json\n")
    with pytest.raises(ManifestError, match=r":2: not valid JSON"):
        read_manifest(tmp_path)


def test_image_naming_rules_share_the_image_number():
    assert image_relpath("a1b2c3", 7, "jpg") == "images/a1/b2/a1b2c3_07.jpg"
    assert image_relpath("ab", 0, ".png") == "images/ab/__/ab_00.png"
    assert image_member("a1b2c3", 7, ".jpg") == "a1b2c3.07.jpg"
    with pytest.raises(ManifestError, match="caption_id 'a/b'"):
        image_relpath("a/b", 0, "jpg")
