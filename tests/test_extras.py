"""The optional extras of solo-learn features (solo_stablerep/extras.py): a feature switched on
without its extra stops in one line naming the extra before any work; with the extras installed
(`pip install '.[wandb,umap]'`), wandb logs offline and auto-UMAP plots through the entry point."""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import (
    PRETRAIN_CONFIGS,
    REPO,
    SMOKE_OVERRIDES,
    compose_raw_cfg,
    labelled_synthetic_data,
    requires_solo,
    tiny_synthetic_run_cfg,
)

from solo_stablerep.errors import INPUT_ERROR_EXIT

pytestmark = requires_solo


def entry_point_without(module: str) -> str:
    """``python -c`` code running the entry point with ``module`` unimportable
    (``sys.modules[name] = None`` makes ``import name`` raise ImportError), installed or not."""
    return textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None
        from solo_stablerep.pretrain import main
        main()
        """
    )


def test_wandb_without_its_extra_is_one_line_before_any_work(image_folder, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", entry_point_without("wandb")]
        + ["--config-path", str(PRETRAIN_CONFIGS / "custom"), "--config-name", "simclr.yaml"]
        + [*SMOKE_OVERRIDES, f"data.train_path={image_folder}", "wandb.enabled=True"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        ),
    )
    assert done.returncode == INPUT_ERROR_EXIT and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "solo-stablerep-pretrain: error: wandb.enabled=True needs the optional extra [wandb] "
        "(wandb cannot be imported: import of wandb halted; None in sys.modules): pip install "
        "'solo-stablerep[wandb]' (from a checkout: pip install '.[wandb]'), or set "
        "wandb.enabled=False"
    ]
    assert not (tmp_path / "trained_models").exists()  # stopped before the model or data


@pytest.mark.parametrize(
    "switch, blocked, extra",
    [
        ("+auto_umap.enabled=True", "umap", "umap"),
        ("+auto_umap.enabled=True", "seaborn", "umap"),
        ("data.format=dali", "nvidia.dali", "dali"),
    ],
)
def test_each_feature_names_its_extra(image_folder, monkeypatch, switch, blocked, extra):
    from solo_stablerep.errors import MissingExtraError
    from solo_stablerep.pretrain import run_pretrain

    monkeypatch.setitem(sys.modules, blocked, None)
    cfg = compose_raw_cfg(
        PRETRAIN_CONFIGS / "custom",
        "simclr.yaml",
        [*SMOKE_OVERRIDES, f"data.train_path={image_folder}", switch],
    )
    key = switch.lstrip("+").split("=")[0]
    with pytest.raises(
        MissingExtraError, match=rf"^{key}=\S+ needs the optional extra \[{extra}\]"
    ):
        run_pretrain(cfg)


@pytest.mark.slow
def test_wandb_logs_offline_and_auto_umap_plots_with_the_extras(tmp_path, monkeypatch):
    for module in ("wandb", "umap", "seaborn", "pandas"):
        pytest.importorskip(module, reason="the [wandb] and [umap] extras are not installed")
    from solo_stablerep.pretrain import run_pretrain

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data, val = labelled_synthetic_data(tmp_path / "data_sets")
    cfg = tiny_synthetic_run_cfg(
        "stablerep",
        data,
        val,
        tmp_path,
        "wandb.enabled=True",
        "+wandb.offline=True",
        "+auto_umap.enabled=True",
        f"+auto_umap.dir={tmp_path / 'auto_umap'}",
    )
    trainer = run_pretrain(cfg)
    assert trainer.global_step == 2
    run_id = trainer.logger.version
    # wandb's offline run (events file) and the Checkpointer's record of its id for auto-resume
    (offline_run,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert list(offline_run.glob("*.wandb"))
    (args_json,) = (tmp_path / "trained_models" / "stablerep").rglob("args.json")
    assert f'"wandb_run_id": "{run_id}"' in args_json.read_text()
    # AutoUMAP's plot of the validation features after the epoch, named after the run
    (plot,) = (tmp_path / "auto_umap" / "stablerep").rglob("*.pdf")
    assert plot.name == f"stablerep-synthetic-{run_id}-ep=0.pdf" and plot.stat().st_size > 0
