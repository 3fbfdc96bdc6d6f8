"""Pytest fixtures; the helpers and marks they build on live in tests/helpers.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # `import helpers` from every tests/ subfolder

from helpers import write_image_folder  # noqa: E402


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("image_folder"))
