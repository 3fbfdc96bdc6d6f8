"""Installed like a package (a wheel, not this checkout), the package still finds its configs and
trains."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import CONFIGS, REPO, requires_solo

# what `git ls-files` would not hold, or what a build leaves behind
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    "outputs",
    "trained_models",
    "demo_output",
    "lightning_logs",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy: an in-tree build reuses build/, which can hold files deleted since
    source = tmp_path_factory.mktemp("source") / "solo-stablerep"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = out.glob("solo_stablerep-*.whl")
    return path


def test_wheel_ships_every_config_once(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {
        n.removeprefix("solo_stablerep/configs/")
        for n in names
        if n.startswith("solo_stablerep/configs/")
    }
    in_checkout = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    assert in_checkout and shipped == in_checkout
    assert not [n for n in names if n.startswith("scripts/")]  # one source of truth, no second copy
    assert not [n for n in names if "tiny_pipeline" in n]  # a fixture of the tests and benchmarks


@pytest.mark.slow
@requires_solo
def test_installed_wheel_generates_and_trains_from_a_folder_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    work = tmp_path / "work"  # nothing of the checkout reachable from here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)

    def run(*command):
        result = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    located = run(
        sys.executable,
        "-c",
        "import solo_stablerep._paths as p; print(p.pretrain_config_dir('synthetic'))",
    )
    config_dir = Path(located.stdout.strip())
    assert config_dir.is_relative_to(site) and (config_dir / "stablerep.yaml").is_file()

    captions = work / "captions.txt"
    captions.write_text("".join(f"a red digit {d} on black\n" for d in range(4)), encoding="utf-8")
    run(
        site / "bin" / "stablerep-generate",
        str(captions),
        str(work / "data"),
        "--backend",
        "procedural",
        "--images-per-caption",
        "2",
        "--image-size",
        "32",
        "--no-progress",
    )
    run(
        site / "bin" / "solo-stablerep-pretrain",
        "--config-path",
        str(config_dir),
        "--config-name",
        "stablerep",
        f"data.train_path={work / 'data'}",
        "backbone.name=resnet18",
        "accelerator=cpu",
        "devices=1",
        "strategy=auto",
        "precision=32",
        "sync_batchnorm=False",
        "optimizer.batch_size=2",
        "data.num_workers=0",
        "max_epochs=1",
        "+max_steps=1",
        "auto_resume.enabled=False",
        "wandb.enabled=False",
        "method_kwargs.proj_hidden_dim=32",
        "method_kwargs.proj_output_dim=16",
        "augmentations.0.crop_size=32",
        "data.synthetic.n_img=2",
        f"checkpoint.dir={work / 'ckpt'}",
    )
    assert list((work / "ckpt").rglob("*.ckpt"))
