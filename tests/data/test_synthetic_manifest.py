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


def _written_lines(n, class_names=("a", "b")):
    """``n`` caption lines as write_manifest writes them (rule paths), and their records."""
    records = [
        CaptionRecord(
            f"c{c:05d}",
            f"caption {c} ünïcode",
            c % 2,
            [image_relpath(f"c{c:05d}", k, "jpg") for k in range(3)],
        )
        for c in range(n)
    ]
    header = _header(num_captions=n, class_names=list(class_names))
    lines = [json.dumps(header)] + [json.dumps(r.__dict__, ensure_ascii=False) for r in records]
    return lines, records


def _index_or_error(root):
    """The records of ``root`` (the index checked equal to them), or the error both raise."""
    from solo_stablerep.data.index import CaptionIndex

    try:
        _, records = read_manifest(root)
    except ManifestError as error:
        with pytest.raises(ManifestError) as again:
            CaptionIndex.from_manifest(root)
        assert str(again.value) == str(error)
        return str(error)
    index = CaptionIndex.from_manifest(root)
    assert list(index.caption_ids) == [r.caption_id for r in records]
    assert list(index.captions) == [r.caption for r in records]
    assert index.labels.tolist() == [r.label for r in records]
    assert [
        [index.image_relpath(i, k) for k in range(index.num_images(i))] for i in range(len(index))
    ] == [r.images for r in records]
    return records


BAD_LINES = [  # (caption line 125 of 200 well-written ones, the error naming it)
    (
        _row(
            caption_id="c00123",
            label=0,
            images=["images/c0/01/c00123_00.jpg", "images/../../x.jpg"],
        ),
        ":125 (caption c00123): image path 'images/../../x.jpg' escapes the root",
    ),
    (
        _row(caption_id="c00123", label=0, images=["/x.jpg"]),
        ":125 (caption c00123): image path '/x.jpg' is absolute (must be relative to the root)",
    ),
    (
        _row(caption_id="c00123", label=0, images=["images/c0/01/c00123_00.jpg"] * 2),
        ":125 (caption c00123): images lists a path twice",
    ),
    (
        _row(caption_id="c00123", label=2, images=[image_relpath("c00123", 0, "jpg")]),
        ":125 (caption c00123): label 2 is not an integer in [0, 2)",
    ),
    (
        _row(caption_id="c00123", label=None, images=[image_relpath("c00123", 0, "jpg")]),
        ":125 (caption c00123): label None is not an integer in [0, 2)",
    ),
    (
        _row(caption_id="c 0123", label=0),
        ":125: caption_id 'c 0123' is not a string of [A-Za-z0-9_-]",
    ),
    (
        _row(caption_id="c00123", label=0, extra=1),
        ":125: columns ['caption', 'caption_id', 'extra', 'images', 'label'] differ from "
        "['caption', 'caption_id', 'images', 'label']",
    ),
    (
        _row(caption_id="c00001", label=0, images=["x.jpg"]),
        ":125: caption_id 'c00001' repeats line 3",
    ),
    (
        '{"caption_id": "c00123", "caption": "cut',
        ":125: not valid JSON (Invalid control character at)",
    ),
    ("", ":125: empty line"),
    (
        '{"caption_id": "c00123", "caption": "a",\r "label": 0, "images": ["x.jpg"]}',
        ":125: not valid JSON (Expecting property name enclosed in double quotes)",
    ),
]


@pytest.mark.parametrize("bad, error", BAD_LINES)
def test_a_bad_line_among_written_ones_is_named_alike_by_the_reader_and_the_index(
    tmp_path, monkeypatch, bad, error
):
    import solo_stablerep.data.manifest as manifest

    monkeypatch.setattr(manifest, "_BLOCK_BYTES", 4096)  # many blocks of lines
    lines, _ = _written_lines(200)
    lines[124] = bad if isinstance(bad, str) else json.dumps(bad)
    (tmp_path / MANIFEST_NAME).write_text("\n".join(lines) + "\n", newline="")
    assert _index_or_error(tmp_path) == f"{tmp_path / MANIFEST_NAME}{error}"


def test_lines_written_otherwise_are_read_alike_by_the_reader_and_the_index(tmp_path, monkeypatch):
    import solo_stablerep.data.manifest as manifest

    monkeypatch.setattr(manifest, "_BLOCK_BYTES", 4096)
    lines, records = _written_lines(200)
    odd = {
        10: CaptionRecord(
            "c00009", 'with "quotes",\n a tab\t and \\', 1, [image_relpath("c00009", 0, "png")]
        ),
        20: CaptionRecord("ab", "short id", 0, [image_relpath("ab", k, "webp") for k in range(12)]),
        30: CaptionRecord(
            "c00029", "custom", 0, ["elsewhere/one.jpg", "./two.jpg", "a/../three.jpg"]
        ),
        40: CaptionRecord(
            "c00039", "one rule path then another", 1, [image_relpath("c00039", 0, "jpg"), "b.jpg"]
        ),
        50: CaptionRecord("c00049", "k=1 alone", 1, [image_relpath("c00049", 1, "jpg")]),
    }
    for i, record in odd.items():
        records[i - 1] = record
        lines[i] = json.dumps(record.__dict__, ensure_ascii=i != 10)
    lines[60] = json.dumps(records[59].__dict__, separators=(",", ":"))  # compact
    lines[70] = "  " + lines[70] + " \t"
    text = (
        "\r\n".join(lines[:100]) + "\n" + "\n".join(lines[100:])
    )  # CRLF, then LF, no last newline
    (tmp_path / MANIFEST_NAME).write_text(text, newline="")
    assert _index_or_error(tmp_path) == records


def test_a_last_line_cut_short_is_named_alike_by_the_reader_and_the_index(tmp_path, monkeypatch):
    import solo_stablerep.data.manifest as manifest

    monkeypatch.setattr(manifest, "_BLOCK_BYTES", 4096)
    lines, _ = _written_lines(200)
    (tmp_path / MANIFEST_NAME).write_text("\n".join(lines)[:-30], newline="")  # a killed writer
    expected = f"{tmp_path / MANIFEST_NAME}:201: not valid JSON (Expecting value)"
    assert _index_or_error(tmp_path) == expected


def test_bytes_that_are_not_utf8_are_one_line_naming_their_line(tmp_path, monkeypatch):
    import solo_stablerep.data.manifest as manifest

    monkeypatch.setattr(manifest, "_BLOCK_BYTES", 4096)
    lines, _ = _written_lines(200)
    data = "\n".join(lines).encode().replace(b"caption 123 ", b"caption 123 \xff")
    (tmp_path / MANIFEST_NAME).write_bytes(data)
    expected = f"{tmp_path / MANIFEST_NAME}:125: not valid UTF-8 (invalid start byte); save the "
    assert _index_or_error(tmp_path) == expected + "manifest as UTF-8"
    # an error on a line before it is named first
    (tmp_path / MANIFEST_NAME).write_bytes(data.replace(b'"c00100"', b'"c 0100"'))
    assert "caption_id 'c 0100'" in _index_or_error(tmp_path)
