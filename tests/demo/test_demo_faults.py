"""``stablerep-demo`` given bad input (docs/data-faults.md): one line naming it, exit code 2, before
any image is generated; another run's results never replaced without ``--overwrite``; output paths
Hydra would misread."""

import json
import subprocess

import pytest
from helpers import compose_parsed_cfg, console_script, make_manifest_dataset, requires_solo

from solo_stablerep.demo.cli import main

PREFIX = "stablerep-demo: error: "
TINY = ["--size", "tiny", "--methods", "stablerep", "simclr"]


def assert_one_line(err, *parts):
    assert err.startswith(PREFIX) and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("--steps", "-1", ">= 1"),  # was: trained forever ("step 250/-1, ~-139 s left")
        ("--steps", "0", ">= 1"),  # was: ZeroDivisionError
        ("--steps", "-3", ">= 1"),
        ("--steps", "abc", "not a whole number"),
        ("--views", "0", ">= 1"),
        ("--images-per-caption", "0", ">= 1"),
        ("--captions-per-class", "0", ">= 1"),
        ("--captions-per-class", "289", "<= 288"),  # more than the distinct descriptions
        ("--crops-per-step", "0", ">= 2"),
        ("--crops-per-step", "1", ">= 2"),
        ("--lr", "-1", "> 0"),
        ("--lr", "0", "> 0"),
        ("--lr", "nan", "> 0"),
        ("--threads", "0", ">= 1"),
        ("--workers", "-1", ">= 0"),
        ("--seeds", "-1", ">= 0"),  # Lightning's seeding refuses it with a traceback
        ("--seeds", str(2**32), "<= 4294967295"),
        ("--synclr-settings", "paper", "invalid choice"),
    ],
)
def test_numeric_options_out_of_range_are_one_line_before_any_work(
    tmp_path, capsys, option, value, allowed
):
    assert main([*TINY, "--output", str(tmp_path / "out"), option, value]) == 2
    assert_one_line(capsys.readouterr().err.strip(), f"argument {option}", value, allowed)
    assert not (tmp_path / "out").exists()


def test_option_errors_through_the_console_script_are_one_line_without_usage(tmp_path):
    done = subprocess.run(
        [console_script("stablerep-demo"), "--steps", "-1", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line(done.stderr.strip(), "argument --steps: got -1")


@pytest.mark.parametrize("under", [False, True])
def test_an_output_that_is_a_file_is_one_line(tmp_path, capsys, under):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    output = a_file / "sub" if under else a_file
    assert main([*TINY, "--output", str(output)]) == 2
    assert_one_line(capsys.readouterr().err.strip(), f"--output {output}", f"{a_file} is a file")
    assert a_file.read_text() == "mine"


@requires_solo
@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lr=abc", "optimizer.lr takes a number"),
        ("max_epochs=abc", "max_epochs takes a whole number"),
        ("max_epochs=1.5", "max_epochs takes a whole number"),
        ("method_kwargs.temperature=abc", "method_kwargs.temperature takes a number"),
        ("data.synthetic.downsample.sizes=8", "data.synthetic.downsample.sizes takes a list"),
    ],
)
def test_a_set_value_of_the_wrong_type_is_one_line_before_any_work(
    tmp_path, capsys, override, expected
):
    """Was: a TypeError traceback from solo-learn or Lightning, after the runs before it."""
    assert main([*TINY, "--output", str(tmp_path / "out"), "--set", override]) == 2
    assert_one_line(capsys.readouterr().err.strip(), f"--set {override}: {expected}")
    assert not (tmp_path / "out").exists()


def write_earlier_run(output, seeds):
    """A folder as a tiny run of ``seeds`` leaves it: its options and a report."""
    from solo_stablerep.demo.pipeline import RUN_FILE, run_options
    from solo_stablerep.demo.runs import SIZES_PRESETS, default_config_dir

    options = run_options(
        SIZES_PRESETS["tiny"], ["stablerep", "simclr"], seeds, default_config_dir().resolve(), []
    )
    output.mkdir()
    (output / RUN_FILE).write_text(json.dumps(options))
    (output / "results.json").write_text('{"earlier": true}')
    return options


@requires_solo
def test_a_run_with_other_options_into_the_same_output_is_refused(tmp_path, capsys):
    output = tmp_path / "out"
    write_earlier_run(output, seeds=[0])
    assert main([*TINY, "--seeds", "1", "--output", str(output)]) == 2
    assert_one_line(
        capsys.readouterr().err.strip(),
        f"--output {output} holds the results of a run with other options (seeds: [0] -> [1])",
        "--overwrite",
    )
    assert (output / "results.json").read_text() == '{"earlier": true}'

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo run")
    assert main([*TINY, "--output", str(tmp_path / "mine")]) == 2
    assert_one_line(capsys.readouterr().err.strip(), "is not empty and holds no demo run")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_synclr_settings_the_demo_does_not_know_are_one_line_before_any_work(tmp_path):
    """run_demo's callers pass a DemoSize, not the CLI's choices: an unknown name is refused,
    not run as the config's settings."""
    from dataclasses import replace

    from solo_stablerep.demo.pipeline import check_options
    from solo_stablerep.demo.runs import SIZES_PRESETS, default_config_dir
    from solo_stablerep.errors import DemoError

    size = replace(SIZES_PRESETS["tiny"], synclr_settings="paper")
    with pytest.raises(DemoError, match=r"synclr_settings 'paper': choose from \['short-run'"):
        check_options(size, ["synclr"], [0], default_config_dir(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@requires_solo
def test_the_same_options_redo_the_run_and_overwrite_replaces_another(tmp_path):
    from solo_stablerep.demo.pipeline import RUN_FILE, claim_output
    from solo_stablerep.errors import DemoError

    output = tmp_path / "out"
    options = write_earlier_run(output, seeds=[0])
    claim_output(output, options, overwrite=False)  # the same command again: redone there
    assert (output / "results.json").exists()

    other = dict(options, seeds=[1])
    with pytest.raises(DemoError, match="seeds: "):
        claim_output(output, other, overwrite=False)
    claim_output(output, other, overwrite=True)
    assert json.loads((output / RUN_FILE).read_text()) == other
    assert not (output / "results.json").exists()  # the other run's report is gone


# paths Hydra's override grammar would read as something else
AWKWARD_NAMES = ["a=b,c", 'it\'s "quoted"', "[x]{y}", "sp ace", "back\\slash", "end\\"]


def test_hydra_quoted_values_read_back_as_given():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from solo_stablerep.demo.runs import hydra_quoted

    parser = OverridesParser.create()
    for name in AWKWARD_NAMES:
        value = parser.parse_override(f"key={hydra_quoted('/d/' + name)}").value()
        assert OmegaConf.create({"key": value}).key == "/d/" + name


@requires_solo
@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_an_output_path_hydra_cannot_lex_reaches_every_run_unchanged(tmp_path, name):
    from solo_stablerep.demo.dataset import write_per_image_manifest
    from solo_stablerep.demo.pipeline import check_options
    from solo_stablerep.demo.runs import SIZES_PRESETS, default_config_dir, method_overrides

    output = tmp_path / name
    size = SIZES_PRESETS["tiny"]
    check_options(size, ["stablerep", "simclr"], [0], default_config_dir(), output)
    data = output / "data"
    make_manifest_dataset(data, 10, size.views, class_names=[str(d) for d in range(10)])
    for method, train_path in (("stablerep", data), ("simclr", write_per_image_manifest(data))):
        run_dir = output / "runs" / "seed0" / method
        overrides = method_overrides(method, size, data, run_dir, seed=0, workers=0)
        # as the run reads it: composed by Hydra, then parsed (and resolved) by solo-learn
        cfg = compose_parsed_cfg(default_config_dir(), f"{method}.yaml", overrides)
        assert cfg.data.train_path == str(train_path)
        assert cfg.default_root_dir == str(run_dir)


def test_an_output_path_with_an_interpolation_is_one_line(tmp_path, capsys):
    output = tmp_path / "${oops}"
    assert main([*TINY, "--output", str(output)]) == 2
    assert_one_line(capsys.readouterr().err.strip(), f"--output {output}: '${{' in the path")
    assert not output.exists()
