"""Backends are chosen by name from a registry: a new one is one class, selectable from the command
line."""

import json

import numpy as np
import pytest
from PIL import Image

from data_gen import cli
from data_gen.backends import BACKENDS, DiffusionBackend, ProceduralBackend, register_backend
from data_gen.settings import BACKEND_FIELDS, GenerationSettings
from solo_stablerep.data.manifest import read_manifest
from solo_stablerep.errors import DataGenError


@pytest.fixture
def flat_backend():
    """A backend that paints every image one grey level, ``10 * guidance_scale``: it reads one
    setting."""

    @register_backend("flat")
    class FlatBackend:
        settings_fields = ("guidance_scale",)

        def __init__(self, settings, device):
            self.settings = settings

        def is_truncated(self, prompt):
            return len(prompt) > 20

        def generate(self, prompts, seeds):
            size, grey = self.settings.resolution, int(10 * self.settings.guidance_scale)
            return [[Image.new("RGB", (size, size), (grey,) * 3) for _ in row] for row in seeds]

    yield FlatBackend
    del BACKENDS["flat"]


def test_built_in_backends_are_registered_with_the_fields_they_read():
    assert BACKENDS["diffusion"] is DiffusionBackend and BACKENDS["procedural"] is ProceduralBackend
    assert set(DiffusionBackend.settings_fields) == set(BACKEND_FIELDS)
    assert ProceduralBackend.settings_fields == ()


def test_a_registered_backend_is_chosen_by_name_from_the_command_line(
    flat_backend, tmp_path, capsys
):
    captions = tmp_path / "captions.txt"
    captions.write_text("a grey square\na long caption that the flat backend truncates\n")
    out = tmp_path / "out"
    args = [
        str(captions),
        str(out),
        "--backend",
        "flat",
        "--guidance-scale",
        "3",
        "--images-per-caption",
        "2",
        "--resolution",
        "16",
        "--image-size",
        "8",
        "--image-format",
        "png",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_written"] == 4 and summary["captions_truncated"] == 1

    stored = json.loads((out / "generation.json").read_text())["settings"]
    assert stored["backend"] == "flat" and stored["guidance_scale"] == 3.0
    # the settings the backend does not read are stored as null, whatever their defaults
    assert all(stored[name] is None for name in BACKEND_FIELDS if name != "guidance_scale")
    _, records = read_manifest(out)
    assert sum(len(record.images) for record in records) == 4
    for image in (path for record in records for path in record.images):
        pixels = np.asarray(Image.open(out / image))
        assert pixels.shape == (8, 8, 3) and (pixels == 30).all()


def test_only_the_settings_a_backend_reads_are_validated(flat_backend, tmp_path, capsys):
    assert (
        GenerationSettings(backend="flat", num_inference_steps=0, scheduler="none")
        .validate()
        .backend
        == "flat"
    )
    with pytest.raises(DataGenError, match="--guidance-scale -1"):
        GenerationSettings(backend="flat", guidance_scale=-1).validate()
    # the command line refuses a value out of range whatever the backend
    assert (
        cli.main(["captions.txt", str(tmp_path), "--backend", "flat", "--guidance-scale", "-1"])
        == 2
    )
    assert "argument --guidance-scale: got -1" in capsys.readouterr().err


def test_unknown_backends_are_refused_with_the_registered_names(flat_backend, capsys):
    assert cli.main(["captions.txt", "out", "--backend", "sdxl"]) == 2
    assert "'flat'" in capsys.readouterr().err  # argparse lists the choices, the new one included
    with pytest.raises(ValueError, match="already registered"):
        register_backend("flat")(object)
