"""One error base for bad input, every class in one module: the entry points print it as one
line, exit with one code, and let every other exception (a bug) keep its traceback."""

import inspect
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, requires_solo

import solo_stablerep.errors
from data_gen import cli as generate_cli
from solo_stablerep.errors import INPUT_ERROR_EXIT, InputError, first_line


def test_every_error_class_is_an_input_error_defined_in_one_module():
    classes = [obj for obj in vars(solo_stablerep.errors).values() if inspect.isclass(obj)]
    names = {cls.__name__ for cls in classes}
    assert {"ManifestError", "SyntheticDataError", "ShardFormatError", "ShardDataError"} <= names
    assert {"DataGenError", "EvalError", "DemoError"} <= names
    assert all(issubclass(cls, InputError) for cls in classes)
    # a class derived from one of them (or ValueError) anywhere else would be a second home
    subclass = re.compile(rf"^class \w+\(({'|'.join(names)}|ValueError)\)", re.MULTILINE)
    defining = {
        str(path.relative_to(REPO))
        for package in ("solo_stablerep", "data_gen")
        for path in (REPO / package).rglob("*.py")
        if subclass.search(path.read_text())
    }
    assert defining == {"solo_stablerep/errors.py"}


def run_module(module, *args):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError("cannot identify image\nTraceback: more"), "cannot identify image"),
        (RuntimeError("\n  hub: 404 not found\n"), "hub: 404 not found"),
        (OSError(), "OSError"),
        (ValueError("   "), "ValueError"),
    ],
)
def test_first_line_quotes_the_first_non_blank_line_or_the_type(error, reason):
    assert first_line(error) == reason


@pytest.mark.parametrize(
    "prog, module, args",
    [
        ("stablerep-generate", "data_gen", ["merge", "{tmp}/nowhere"]),
        (
            "solo-stablerep-eval",
            "solo_stablerep.eval",
            ["{tmp}/missing.ckpt", "--datasets", "digits", "--output", "{tmp}/out"],
        ),
        (
            "stablerep-demo",
            "solo_stablerep.demo",
            ["--output", "{tmp}/demo", "--config-dir", "{tmp}"],
        ),
        pytest.param(
            "solo-stablerep-pretrain",
            "solo_stablerep.pretrain",
            ["data.train_path=a{{b}}.tar"],
            marks=requires_solo,
        ),
    ],
)
def test_every_command_line_tool_exits_2_with_one_line_for_bad_input(prog, module, args, tmp_path):
    done = run_module(module, *(arg.format(tmp=tmp_path) for arg in args))
    assert done.returncode == INPUT_ERROR_EXIT == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"{prog}: error: "), done.stderr


def test_generate_cli_prints_input_errors_in_one_line(tmp_path, capsys):
    assert generate_cli.main(["merge", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stablerep-generate: error: ") and "\n" not in err


def test_generate_cli_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch):
    import data_gen.output

    def broken_merge(out):
        raise ValueError("a bug deep in a library")

    monkeypatch.setattr(data_gen.output, "merge", broken_merge)
    with pytest.raises(ValueError, match="a bug deep in a library"):
        generate_cli.main(["merge", str(tmp_path)])


@requires_solo
@pytest.mark.parametrize(
    "raised, one_line",
    [
        (InputError("data.train_path=x: no such file"), True),
        (ValueError("a bug deep in a library"), False),
    ],
)
def test_pretrain_entry_point_catches_input_errors_only(raised, one_line, monkeypatch, capsys):
    from solo_stablerep import pretrain

    def failing_run(cfg):
        raise raised

    monkeypatch.setattr(pretrain, "run_pretrain", failing_run)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    entry = pretrain.hydra_main.__wrapped__  # the function under hydra.main
    if one_line:
        with pytest.raises(SystemExit) as stop:
            entry(None)
        assert stop.value.code == 2
        assert (
            capsys.readouterr().err
            == "solo-stablerep-pretrain: error: data.train_path=x: no such file\n"
        )
    else:
        with pytest.raises(ValueError, match="a bug deep in a library"):
            entry(None)
