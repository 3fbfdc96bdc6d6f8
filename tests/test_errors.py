"""One error class for bad input: the entry points print it as one line and let every other
exception (a bug) keep its traceback."""

import pytest
from helpers import requires_solo

from data_gen import DataGenError
from data_gen import cli as generate_cli
from solo_stablerep.data.index import SyntheticDataError
from solo_stablerep.data.manifest import ManifestError
from solo_stablerep.data.shards import ShardFormatError
from solo_stablerep.data.readers import ShardDataError
from solo_stablerep.demo.runs import DemoError
from solo_stablerep.errors import InputError


@pytest.mark.parametrize(
    "error",
    [ManifestError, SyntheticDataError, ShardFormatError, ShardDataError, DataGenError, DemoError],
)
def test_user_facing_errors_share_one_base(error):
    assert issubclass(error, InputError)


def test_generate_cli_prints_input_errors_in_one_line(tmp_path, capsys):
    assert generate_cli.main(["merge", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stablerep-generate: error: ") and "\n" not in err


def test_generate_cli_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch):
    import data_gen.storage

    def broken_merge(out):
        raise ValueError("a bug deep in a library")

    monkeypatch.setattr(data_gen.storage, "merge", broken_merge)
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
def test_pretrain_entry_point_catches_input_errors_only(raised, one_line, monkeypatch):
    from solo_stablerep import pretrain

    def failing_run(cfg):
        raise raised

    monkeypatch.setattr(pretrain, "run_pretrain", failing_run)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    entry = pretrain.hydra_main.__wrapped__  # the function under hydra.main
    if one_line:
        with pytest.raises(SystemExit, match=r"^solo-stablerep-pretrain: error: data.train_path=x"):
            entry(None)
    else:
        with pytest.raises(ValueError, match="a bug deep in a library"):
            entry(None)
