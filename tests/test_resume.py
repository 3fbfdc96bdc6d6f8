"""Auto-resume continues only the same run on the same data (issue 29), through the pretrain entry
point: tiny runs (resnet18, 16 px, one batch an epoch) into one checkpoint folder, on manifest data
sets and tar shards. Whether a run resumed is read from Lightning (``trainer.ckpt_path``, the step
it starts at), and the console line that names the decision is checked."""

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="the entry point builds on solo-learn")

from helpers import (  # noqa: E402
    SYNTHETIC_CPU_OVERRIDES,
    compose_parsed_cfg,
    compose_raw_cfg,
    copy_configs,
    make_manifest_dataset,
    run_pretrain_command,
)
from lightning.pytorch import Callback  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from data_gen.convert import convert  # noqa: E402

RUN = [
    *SYNTHETIC_CPU_OVERRIDES,
    "max_epochs=2",
    "+limit_train_batches=1",
    "+num_sanity_val_steps=0",
    "backbone.name=resnet18",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "data.synthetic.n_img=2",
    "wandb.enabled=False",
    "auto_resume.enabled=True",
    "checkpoint.enabled=True",
]


class StartStep(Callback):
    """The global step training starts at: 0 for a new run, > 0 for a resumed one."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning's CSV logs go to the working directory
    copy_configs(tmp_path / "cfg")
    make_manifest_dataset(tmp_path / "a", 8, 2, caption="a caption {}".format)
    make_manifest_dataset(tmp_path / "b", 8, 2, caption="b caption {}".format)
    return tmp_path


def train(folders, train_path, *overrides, caplog, interrupted=True):
    """One run of the entry point into ``folders/ckpt``, ``interrupted`` after its first epoch (as
    a job stopped at its time limit): (where Lightning restored from, the step training started at,
    the console line of the auto-resume decision)."""
    from solo_stablerep.pretrain import run_pretrain

    cfg = compose_raw_cfg(
        folders / "cfg",
        "stablerep.yaml",
        [
            *RUN,
            f"checkpoint.dir={folders / 'ckpt'}",
            f"data.train_path={train_path}",
            *(["+max_steps=1"] if interrupted else []),
            *overrides,
        ],
    )
    start = StartStep()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="solo_stablerep.resume"):
        trainer = run_pretrain(cfg, callbacks=[start])
    (line,) = [r.getMessage() for r in caplog.records if r.name == "solo_stablerep.resume"]
    return trainer.ckpt_path, start.step, line


def checkpoints(folders):
    return sorted((folders / "ckpt" / "stablerep").glob("*/*.ckpt"), key=os.path.getmtime)


@pytest.mark.slow
def test_another_data_set_starts_afresh_and_the_same_one_resumes(folders, caplog):
    restored, step, line = train(folders, folders / "a", caplog=caplog)
    assert (restored, step) == (None, 0)
    assert line.startswith("auto-resume: no checkpoint of this run in ")
    (first,) = checkpoints(folders)

    # the same command on another data set, same checkpoint folder: a new run, said in one line
    restored, step, line = train(folders, folders / "b", caplog=caplog)
    assert (restored, step) == (None, 0)
    assert line == (
        f"auto-resume: not resuming {first}: it trained on another data set, "
        f"data.train_path={folders / 'a'}; starting a new run "
        f"(resume_from_checkpoint={first} continues it anyway)"
    )

    # data set a again: its own run resumes, although b's run is newer
    restored, step, line = train(folders, folders / "a", caplog=caplog, interrupted=False)
    assert (restored, step) == (str(first), 1)
    assert line == f"auto-resume: resuming {first} (the same run settings and data set)"

    # the console script prints that line (its logging shows only this project's INFO lines)
    newest = checkpoints(folders)[-1]
    done = run_pretrain_command(
        ["solo-stablerep-pretrain"],
        folders / "cfg",
        "stablerep.yaml",
        folders,
        *RUN,
        f"checkpoint.dir={folders / 'ckpt'}",
        f"data.train_path={folders / 'a'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"auto-resume: resuming {newest} (the same run settings and data set)\n" in done.stderr


@pytest.mark.slow
def test_a_data_set_rewritten_or_moved_is_not_resumed(folders, caplog):
    train(folders, folders / "a", caplog=caplog)
    (first,) = checkpoints(folders)

    shutil.move(folders / "a", folders / "moved")  # mv: the same files, another path
    restored, step, line = train(folders, folders / "moved", caplog=caplog)
    assert (restored, step) == (None, 0)
    assert f"it trained on the same data set at {folders / 'a'} (moved or copied since)" in line
    assert f"resume_from_checkpoint={first} continues it anyway" in line

    # a data set written anew at the first path: same size and header, another modification time
    make_manifest_dataset(folders / "a", 8, 2, caption="a caption {}".format)
    restored, step, line = train(folders, folders / "a", caplog=caplog)
    assert (restored, step) == (None, 0)
    assert "the data set at data.train_path changed since (regenerated or rewritten" in line


@pytest.mark.slow
def test_shards_regenerated_at_the_same_path_are_not_resumed(folders, caplog):
    shards = folders / "shards"
    convert(folders / "a", shards, shard_bytes=3000, progress=False)
    layout = "data.synthetic.layout=webdataset"
    restored, step, _ = train(folders, shards, layout, caplog=caplog)
    assert (restored, step) == (None, 0)
    (first,) = checkpoints(folders)

    # the same shards again resume; converted from another data set (another run_id), not
    restored, step, line = train(folders, shards, layout, caplog=caplog, interrupted=False)
    assert (restored, step) == (str(first), 1)
    convert(folders / "b", shards, shard_bytes=3000, progress=False, overwrite=True)
    restored, step, line = train(folders, shards, layout, caplog=caplog)
    assert (restored, step) == (None, 0)
    assert "changed since (regenerated or rewritten: ['run_id'])" in line


# ---------------------------------------------------------- run folders, without training


def parsed(folders, train_path):
    return compose_parsed_cfg(
        folders / "cfg",
        "stablerep.yaml",
        [*RUN, f"checkpoint.dir={folders / 'ckpt'}", f"data.train_path={train_path}"],
    )


def run_folder(folders, name: str, args) -> Path:
    """A run folder as solo-learn's Checkpointer leaves it: ``args`` (text) and a checkpoint (a zip
    file, as torch.save writes)."""
    run = folders / "ckpt" / "stablerep" / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(args)
    with zipfile.ZipFile(run / f"stablerep-{name}-ep=0.ckpt", "w") as ckpt:
        ckpt.writestr("data.pkl", b"")
    return run / f"stablerep-{name}-ep=0.ckpt"


def decide(cfg, caplog):
    from solo_stablerep.resume import resume_checkpoint

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="solo_stablerep.resume"):
        found = resume_checkpoint(cfg)
    return found, [r.getMessage() for r in caplog.records if r.name == "solo_stablerep.resume"]


def test_a_run_of_solo_learns_script_or_an_unreadable_args_json_is_not_resumed(folders, caplog):
    cfg = parsed(folders, folders / "a")
    args = OmegaConf.to_container(cfg)  # the same settings, written without data.identity
    ckpt = run_folder(folders, "solo", json.dumps(args))
    found, lines = decide(cfg, caplog)
    assert found == (None, None)
    assert lines == [
        f"auto-resume: not resuming {ckpt}: it records no data identity (written by solo-learn's "
        f"script or an older version); starting a new run (resume_from_checkpoint={ckpt} "
        "continues it anyway)"
    ]

    # its args.json cut short (a writer killed) or not an object: a warning, then a new run
    shutil.rmtree(ckpt.parent)
    for text in ('{"name": "stablerep', "[1, 2]"):
        ckpt = run_folder(folders, "cut", text)
        found, lines = decide(parsed(folders, folders / "a"), caplog)
        assert found == (None, None)
        assert lines[0].startswith(f"auto-resume: {ckpt.parent / 'args.json'} unreadable (")
        assert lines[0].endswith(f"): {ckpt.parent} not considered")
        assert lines[1].startswith("auto-resume: no checkpoint of this run in ")
        shutil.rmtree(ckpt.parent)


def test_the_newest_complete_checkpoint_of_the_run_is_resumed(folders, caplog):
    from solo_stablerep.resume import data_identity

    cfg = parsed(folders, folders / "a")
    args = OmegaConf.to_container(cfg)
    run_folder(folders, "0", json.dumps(args))  # a newer run without data.identity
    args["data"]["identity"] = data_identity(cfg)
    run = run_folder(folders, "1", json.dumps(args)).parent
    # checkpoint.keep_prev: epochs 0 to 2, epoch 2's killed while it was written (no zip directory)
    for epoch in (1, 2):
        shutil.copy(run / "stablerep-1-ep=0.ckpt", run / f"stablerep-1-ep={epoch}.ckpt")
        os.utime(run / f"stablerep-1-ep={epoch}.ckpt", ns=(epoch * 10**9,) * 2)
    os.utime(run / "stablerep-1-ep=0.ckpt", ns=(0, 0))
    cut = run / "stablerep-1-ep=2.ckpt"
    cut.write_bytes(cut.read_bytes()[:-10])
    found, lines = decide(cfg, caplog)
    assert found == (str(run / "stablerep-1-ep=1.ckpt"), None)
    resumed = run / "stablerep-1-ep=1.ckpt"
    assert lines == [f"auto-resume: resuming {resumed} (the same run settings and data set)"]
