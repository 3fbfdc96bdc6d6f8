"""Which checkpoint a pretraining run continues: solo-learn's auto-resume, on the same data only.

solo-learn's :class:`~solo.utils.auto_resumer.AutoResumer` continues the newest run in
``<checkpoint.dir>/<method>/`` whose ``args.json`` matches the command on its ``SHOULD_MATCH`` keys
(name, backbone, method, ``data.dataset``, epochs, optimiser, wandb project): the same command on
another data set silently continued the first one. Every run now records ``data.identity`` in its
cfg (so in its ``args.json``): the absolute ``data.train_path``, and for synthetic data what its
format records of the data set (:attr:`~solo_stablerep.data.readers.Reader.identity`: the shards'
run id, or the manifest's or CSV's size and first line, whose header holds the generator's settings
and caption digest). A run is continued only when solo-learn's matcher accepts it *and* its
identity is ours; each decision is one console line.

* No run matches: a new run starts (one line says so).
* The newest matching run trained on other data (another path; the same path regenerated or
  rewritten; the same data set moved or copied to another path; or a run that records no identity,
  written by solo-learn's script or an older version): a new run starts, and one line names that
  checkpoint, why, and ``resume_from_checkpoint=...`` to continue it anyway.
* Otherwise the newest complete checkpoint of the newest same-data run is resumed, named in one
  line.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from solo.utils.auto_resumer import AutoResumer

log = logging.getLogger(__name__)


def data_identity(cfg: DictConfig) -> dict:
    """``data.identity`` of a parsed cfg: the absolute ``data.train_path`` (a brace pattern made
    absolute as written), plus for synthetic data its layout settings and its format's identity."""
    identity = {"path": os.path.abspath(cfg.data.train_path)}
    if cfg.data.dataset == "synthetic":
        syn = cfg.data.synthetic
        # recorded where the cfg check opened the reader: no second open of the data set
        identity.update(layout=syn.layout, **OmegaConf.to_container(cfg.data.format_identity))
        if syn.layout == "authors":
            identity.update(csv=syn.csv, roots=list(syn.roots))
    return identity


def _say(message: str, *args) -> None:
    """One console line, from the first process only (every DDP rank takes the same decision)."""
    rank_zero_only(log.info)(message, *args)


def _newest_complete_checkpoint(run: Path) -> Path | None:
    """The run folder's newest checkpoint that was written in full: a checkpoint is a zip file,
    whose directory at its end is missing when its writer was killed (solo-learn takes the first
    ``.ckpt`` the folder lists, an older one with ``checkpoint.keep_prev``)."""
    complete = [path for path in run.glob("*.ckpt") if zipfile.is_zipfile(path)]
    return max(complete, key=lambda path: path.stat().st_mtime_ns, default=None)


def _other_data(theirs, ours: dict) -> str | None:
    """Why a run's recorded ``data.identity`` is not ours, or None when it is."""
    if theirs == ours:
        return None
    if not isinstance(theirs, dict):
        return "it records no data identity (written by solo-learn's script or an older version)"
    if theirs.get("path") != ours["path"]:
        same = {k: v for k, v in theirs.items() if k != "path"} == {
            k: v for k, v in ours.items() if k != "path"
        }
        if same:
            return f"it trained on the same data set at {theirs['path']} (moved or copied since)"
        return f"it trained on another data set, data.train_path={theirs['path']}"
    changed = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
    return f"the data set at data.train_path changed since (regenerated or rewritten: {changed})"


def _matching_runs(cfg: DictConfig, checkpoint_dir: Path) -> list[tuple[Path, str | None, object]]:
    """(checkpoint, wandb run id, recorded data identity) of each run folder solo-learn's matcher
    accepts for ``cfg`` (its keys and ``auto_resume.max_hours``), newest first."""
    found = []
    for run in sorted(p for p in checkpoint_dir.iterdir() if p.is_dir()):
        if not any(run.glob("*.ckpt")):
            continue
        args_path = run / "args.json"
        try:
            args = json.loads(args_path.read_text(encoding="utf-8"))
            if not isinstance(args, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:  # its writer killed, or written by hand
            log.warning("auto-resume: %s unreadable (%s): %s not considered", args_path, error, run)
            continue
        ckpt, wandb_run_id = AutoResumer(run, max_hours=cfg.auto_resume.max_hours).find_checkpoint(
            cfg
        )
        ckpt = ckpt and _newest_complete_checkpoint(run)
        if ckpt is not None:
            identity = (args.get("data") or {}).get("identity")
            found.append((ckpt.stat().st_mtime_ns, ckpt, wandb_run_id, identity))
    found.sort(key=lambda entry: entry[0], reverse=True)
    return [entry[1:] for entry in found]


def resume_checkpoint(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(checkpoint path, wandb run id) the run continues from, or (None, None); records
    ``data.identity`` in ``cfg`` first (saved in the run's ``args.json``). An explicit
    ``resume_from_checkpoint`` is taken as given (and removed from the cfg, as solo-learn's script
    does); otherwise, with ``auto_resume.enabled``, the module docstring's rule."""

    cfg.data.identity = data_identity(cfg)
    ckpt = cfg.resume_from_checkpoint
    if ckpt is not None:
        del cfg.resume_from_checkpoint
        _say("resuming %s (resume_from_checkpoint)", ckpt)
        return str(ckpt), None
    if not cfg.auto_resume.enabled:
        return None, None

    checkpoint_dir = Path(cfg.checkpoint.dir) / cfg.method
    runs = _matching_runs(cfg, checkpoint_dir) if checkpoint_dir.is_dir() else []
    ours = OmegaConf.to_container(cfg.data.identity)
    for ckpt, wandb_run_id, theirs in runs:
        if _other_data(theirs, ours) is None:
            _say("auto-resume: resuming %s (the same run settings and data set)", ckpt)
            return str(ckpt), wandb_run_id
    if runs:
        # explained by the newest run on the same path (changed since), else the newest run
        same_path = [
            run for run in runs if isinstance(run[2], dict) and run[2].get("path") == ours["path"]
        ]
        ckpt, _, theirs = (same_path or runs)[0]
        others = f" (nor {len(runs) - 1} other runs of other data)" if len(runs) > 1 else ""
        _say(
            "auto-resume: not resuming %s%s: %s; starting a new run "
            "(resume_from_checkpoint=%s continues it anyway)",
            ckpt,
            others,
            _other_data(theirs, ours),
            ckpt,
        )
    else:
        _say("auto-resume: no checkpoint of this run in %s: starting a new run", checkpoint_dir)
    return None, None
