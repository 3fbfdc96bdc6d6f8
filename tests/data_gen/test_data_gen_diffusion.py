"""data_gen with the diffusion backend, on a tiny random Stable Diffusion saved and reloaded via
from_pretrained."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from bench.fixtures.tiny_pipeline import build_tiny_pipeline
from data_gen.cli import main
from solo_stablerep.data.manifest import read_manifest

FAST = [
    "--resolution",
    "32",
    "--image-size",
    "16",
    "--steps",
    "2",
    "--images-per-caption",
    "3",
    "--image-format",
    "png",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return str(build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture(scope="session")
def captions(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.csv"
    rows = [
        f"a photo of a {animal} number {i}"
        for i, animal in enumerate(["cat", "dog", "fox", "owl", "cow", "eel"] * 2)
    ]
    lines = ["caption,label"] + [f"{text},{text.split()[4]}" for text in rows]
    lines.insert(3, f"{rows[0]},cat")  # a duplicate
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(captions_path, out, model, *extra):
    return main([str(captions_path), str(out), "--model", model, *FAST, *extra])


def pixels(out):
    header, records = read_manifest(out)
    return {
        r.caption_id: [np.asarray(Image.open(Path(out) / p)) for p in r.images] for r in records
    }


def assert_same_images(expected, got, exact):
    """Each caption's images match. `exact` where the batch shape is the same (byte-identical then);
    else within rounding: float sums in the UNet run in another order for another batch shape or
    SIMD path, which moves a few 8-bit values by 1 on some CPUs, so max |diff| <= 2 and mean |diff|
    <= 0.01 of 255."""
    assert expected.keys() == got.keys()
    for cid in expected:
        for a, b in zip(expected[cid], got[cid], strict=True):
            if exact:
                np.testing.assert_array_equal(a, b)
            else:
                diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
                assert diff.max() <= 2 and diff.mean() <= 0.01, (
                    cid,
                    int(diff.max()),
                    float(diff.mean()),
                )


@pytest.fixture(scope="session")
def reference(tiny_model, captions, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run(captions, out, tiny_model, "--batch-size", "4") == 0
    return out


def test_counts_sizes_labels_and_manifest(reference):
    header, records = read_manifest(reference)
    assert header["num_captions"] == len(records) == 12  # the duplicate is dropped
    assert header["class_names"] == sorted({"cat", "dog", "fox", "owl", "cow", "eel"})
    assert (
        header["generator"]["guidance_scale"] == 2.0
        and header["generator"]["num_inference_steps"] == 2
    )
    for record in records:
        assert header["class_names"][record.label] == record.caption.split()[4]
        assert len(record.images) == 3
        for path in record.images:
            assert Image.open(reference / path).size == (16, 16)
    files = {
        p.relative_to(reference).as_posix()
        for p in (reference / "images").rglob("*")
        if p.is_file()
    }
    assert files == {p for r in records for p in r.images}
    # images of one caption differ (own generator each)
    first = pixels(reference)[records[0].caption_id]
    assert not np.array_equal(first[0], first[1])
    assert (reference / "contact_sheets" / "part-00000-of-00001.png").is_file()


def test_same_images_for_batch_size_1_and_4(reference, tiny_model, captions, tmp_path):
    assert run(captions, tmp_path, tiny_model, "--batch-size", "1") == 0
    assert_same_images(pixels(reference), pixels(tmp_path), exact=False)


def test_two_parts_then_merge_equal_one_part(reference, tiny_model, captions, tmp_path):
    for part in ("0", "1"):
        assert (
            run(
                captions,
                tmp_path,
                tiny_model,
                "--num-parts",
                "2",
                "--part-index",
                part,
                "--no-merge",
            )
            == 0
        )
    assert not (tmp_path / "manifest.jsonl").exists()
    assert main(["merge", str(tmp_path)]) == 0
    assert [r.caption_id for r in read_manifest(tmp_path)[1]] == [
        r.caption_id for r in read_manifest(reference)[1]
    ]
    # a part's last batch can be smaller than the reference's batches of 4
    assert_same_images(pixels(reference), pixels(tmp_path), exact=False)


def test_merge_refuses_unfinished_run(tiny_model, captions, tmp_path, capsys):
    assert run(captions, tmp_path, tiny_model, "--num-parts", "3", "--part-index", "1") == 0
    assert not (tmp_path / "manifest.jsonl").exists()  # not the last part: no automatic merge
    assert main(["merge", str(tmp_path)]) == 2
    assert "unfinished" in capsys.readouterr().err


def test_resume_after_sigkill(reference, tiny_model, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text(
        "\n".join(f"caption number {i} of a long run" for i in range(40)) + "\n", encoding="utf-8"
    )
    command = [
        sys.executable,
        "-m",
        "data_gen",
        str(many),
        str(tmp_path / "out"),
        "--model",
        tiny_model,
        *FAST,
        "--batch-size",
        "1",
    ]
    log = tmp_path / "out" / "parts" / "part-00000-of-00001.jsonl"
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (log.exists() and log.read_bytes().count(b"\n") >= 3):
        assert process.poll() is None and time.time() < deadline, (
            "generator ended before it could be killed"
        )
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_at_kill = log.read_bytes().count(b"\n")
    assert finished_at_kill < 40 and not (tmp_path / "out" / "manifest.jsonl").exists()

    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    resumed = tmp_path / "out"
    header, records = read_manifest(resumed)
    assert len(records) == 40 and len({r.caption_id for r in records}) == 40
    files = [p for p in resumed.rglob("*") if p.is_file() and "images" in p.parts]
    assert sorted(p.relative_to(resumed).as_posix() for p in files) == sorted(
        p for r in records for p in r.images
    )
    for path in files:
        Image.open(path).load()  # no truncated file
    assert not [p for p in resumed.rglob("*.tmp")]

    # same batch size as the killed run: the same bytes; another batch size: the same within
    # rounding
    assert run(many, tmp_path / "clean", tiny_model, "--batch-size", "1") == 0
    assert_same_images(pixels(tmp_path / "clean"), pixels(resumed), exact=True)
    assert run(many, tmp_path / "batch3", tiny_model, "--batch-size", "3") == 0
    assert_same_images(pixels(tmp_path / "batch3"), pixels(resumed), exact=False)


def test_long_captions_are_counted_as_truncated(tiny_model, tmp_path, capsys):
    path = tmp_path / "long.txt"
    path.write_text("short one\n" + "a very long caption " * 10 + "\n", encoding="utf-8")
    assert run(path, tmp_path / "out", tiny_model) == 0
    assert '"captions_truncated": 1' in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out")[1]) == 2


@pytest.mark.parametrize(
    "model, expected",
    [("/no/such/model/folder", "no such folder"), ("nobody-here/no-such-model-xyz", "cannot load")],
)
def test_unknown_model_is_one_clear_line(model, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "c.txt"
    path.write_text("a cat\n", encoding="utf-8")
    assert run(path, tmp_path / "out", model) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and model in err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--guidance-scale", "-1"),
        ("--steps", "0"),
        ("--images-per-caption", "0"),
        ("--batch-size", "0"),
    ],
)
def test_invalid_numbers_rejected_before_model_loads(flag, value, tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("a cat\n", encoding="utf-8")
    # The model does not exist: an error about the number proves it came first.
    assert (
        main([str(path), str(tmp_path / "out"), "--model", "/no/such/model", *FAST, flag, value])
        == 2
    )
    err = capsys.readouterr().err
    assert flag in err and "model" not in err.replace(flag, "")
    assert not (tmp_path / "out").exists()


def test_other_settings_refused_unless_overwrite(reference, tiny_model, captions, tmp_path, capsys):
    assert run(captions, tmp_path, tiny_model) == 0
    assert run(captions, tmp_path, tiny_model, "--guidance-scale", "5") == 2
    assert "guidance_scale" in capsys.readouterr().err
    assert run(captions, tmp_path, tiny_model, "--guidance-scale", "5", "--overwrite") == 0
    assert read_manifest(tmp_path)[0]["generator"]["guidance_scale"] == 5.0
    assert not np.array_equal(
        pixels(tmp_path)[read_manifest(tmp_path)[1][0].caption_id][0],
        pixels(reference)[read_manifest(tmp_path)[1][0].caption_id][0],
    )


def test_procedural_backend_is_byte_identical_across_batch_sizes(captions, tmp_path):
    # no float reductions over the batch there: the bytes cannot depend on the batch shape
    procedural = [
        "--backend",
        "procedural",
        "--image-size",
        "16",
        "--images-per-caption",
        "2",
        "--image-format",
        "png",
        "--no-progress",
    ]
    for batch_size in ("1", "5"):
        assert (
            main(
                [str(captions), str(tmp_path / batch_size), *procedural, "--batch-size", batch_size]
            )
            == 0
        )
    assert_same_images(pixels(tmp_path / "1"), pixels(tmp_path / "5"), exact=True)
