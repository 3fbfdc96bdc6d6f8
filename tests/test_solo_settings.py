"""solo-learn settings of the wrong type or range through the pretrain entry point (issue 29): one
line naming the key, before any data is read, instead of a TypeError from solo-learn's parse_cfg or
the Trainer, or a silent wrong run."""

import contextlib
import io
import os

import pytest

pytest.importorskip("solo", reason="the entry point builds on solo-learn")

from helpers import (  # noqa: E402
    SMOKE_OVERRIDES,
    SYNTHETIC_CONFIGS,
    compose_raw_cfg,
    run_pretrain_command,
)

from solo_stablerep.solo_settings import SETTINGS  # noqa: E402


def entry(train_path, *overrides) -> str:
    """The one-line error the entry point prints for the shipped synthetic StableRep config with
    ``overrides`` (it must fail)."""
    from solo_stablerep import pretrain

    cfg = compose_raw_cfg(
        SYNTHETIC_CONFIGS,
        "stablerep.yaml",
        [*SMOKE_OVERRIDES, f"data.train_path={train_path}", *overrides],
    )
    os.environ.pop("HYDRA_FULL_ERROR", None)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        pretrain.hydra_main.__wrapped__(cfg)
    assert stop.value.code == 2 and "Traceback" not in stderr.getvalue()
    (line,) = stderr.getvalue().strip().splitlines()
    assert line.startswith("solo-stablerep-pretrain: error: ")
    return line.removeprefix("solo-stablerep-pretrain: error: ")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lr=abc", "optimizer.lr must be > 0, got 'abc'"),
        ("optimizer.lr=nan", "optimizer.lr must be > 0, got nan"),
        ("optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
        ("optimizer.batch_size=2.5", "optimizer.batch_size must be an integer >= 1, got 2.5"),
        ("max_epochs=0", "max_epochs must be an integer >= 1, got 0"),
        ("optimizer.weight_decay=null", "optimizer.weight_decay must be >= 0, got null"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
        ("checkpoint.frequency=0", "checkpoint.frequency must be an integer >= 1, got 0"),
        # a string for a switch is true, whatever it says
        ("wandb.enabled=off", "wandb.enabled must be true or false, got 'off'"),
        # solo-learn would scale the learning rate by len("auto")
        (
            "devices=auto",
            "devices must be an integer >= 1 (a device count) or a list of device ids, got 'auto'",
        ),
    ],
)
def test_a_setting_of_the_wrong_type_or_range_is_one_line(tmp_path, override, expected):
    assert entry(tmp_path, override).startswith(expected)


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_checked_setting_given_a_word_is_one_line(tmp_path, key):
    line = entry(tmp_path, f"++{key}=abc")
    assert line.startswith(f"{key} must ") and line.endswith(", got 'abc'")


def test_the_console_script_prints_one_line(tmp_path):
    done = run_pretrain_command(
        ["solo-stablerep-pretrain"],
        SYNTHETIC_CONFIGS,
        "stablerep.yaml",
        tmp_path,
        f"data.train_path={tmp_path}",
        "optimizer.lr=abc",
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "solo-stablerep-pretrain: error: optimizer.lr must be > 0, got 'abc'"
    )
