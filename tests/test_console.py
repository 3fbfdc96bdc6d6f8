"""What the entry points share: their log output (this project's INFO lines, everyone's warnings,
nobody else's INFO), their options' types and their output checks."""

import argparse
import re
import subprocess
import sys

import pytest

from solo_stablerep.console import (
    ArgumentParser,
    check_output_file,
    check_output_folder,
    int_at_least,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from solo_stablerep.errors import InputError

SCRIPT = """
import logging
from solo_stablerep.console import configure_logging
configure_logging()
logging.getLogger("data_gen.runner").info("ours-info")
logging.getLogger("solo_stablerep.data.readers").warning("ours-warning")
logging.getLogger("torch.distributed").info("theirs-info")
logging.getLogger("timm").warning("theirs-warning")
print("stdout-stays-clean")
"""


def test_configure_logging_shows_our_info_and_every_warning_on_stderr():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout-stays-clean\n"
    lines = result.stderr.splitlines()
    assert lines == [
        "data_gen.runner: ours-info",
        "solo_stablerep.data.readers: ours-warning",
        "timm: theirs-warning",
    ]


# ---- the options' types and the output checks every entry point shares


@pytest.mark.parametrize(
    "parse, text, value",
    [
        (positive_int, "3", 3),
        (non_negative_int, "0", 0),
        (int_at_least(2, 5), "5", 5),
        (seed_int, str(2**32 - 1), 2**32 - 1),
        (positive_float, "1e-3", 1e-3),
    ],
)
def test_option_types_accept_their_range(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (positive_int, "0", "got 0; give a whole number >= 1"),
        (positive_int, "1.5", "'1.5' is not a whole number"),
        (non_negative_int, "-1", "got -1; give a whole number >= 0"),
        (int_at_least(2, 5), "6", "got 6; give a whole number >= 2 and <= 5"),
        (seed_int, str(2**32), "<= 4294967295"),
        (positive_float, "0", "got 0; give a finite number > 0"),
        (positive_float, "-1", "> 0"),
        (positive_float, "nan", "> 0"),
        (positive_float, "inf", "> 0"),
        (positive_float, "abc", "'abc' is not a number"),
    ],
)
def test_option_types_refuse_what_is_outside_it(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_parser_errors_are_input_errors_naming_the_option():
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--steps", type=positive_int)
    with pytest.raises(InputError) as caught:
        parser.parse_args(["--steps", "0"])
    assert str(caught.value) == (
        "argument --steps: got 0; give a whole number >= 1 (see tool --help)"
    )
    with pytest.raises(InputError, match="unrecognized arguments: --nope"):
        parser.parse_args(["--nope", "3"])


def test_output_checks_name_the_file_in_the_way(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    check_output_folder(tmp_path / "new" / "deeper")  # made later: fine
    for path in (a_file, a_file / "sub"):
        with pytest.raises(InputError, match=f"--output {path}: {a_file} is a file"):
            check_output_folder(path)
    with pytest.raises(InputError, match="OUT .*: is a folder"):
        check_output_file(tmp_path, "OUT")
    with pytest.raises(InputError, match=f"{a_file} is a file"):
        check_output_file(a_file / "model.safetensors", "OUT")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        check_output_file(a_file, "OUT")
    check_output_file(a_file, "OUT", overwrite=True)
