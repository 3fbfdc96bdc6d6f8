"""What a user sees when solo-learn is missing or is PyPI's old 1.0.2 (argparse API)."""

import subprocess
import sys
import textwrap

from helpers import requires_solo


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


REGISTER = """
    import solo_stablerep
    from solo_stablerep.losses import multi_positive_contrastive_loss  # works without solo
    try:
        solo_stablerep.register_methods()
    except solo_stablerep.SoloLearnNotAvailable as error:
        print("ERROR:", error)
"""


def test_missing_solo_learn_is_reported_with_the_install_command(tmp_path):
    block = """
        import sys
        class BlockSolo:  # as if solo-learn were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "solo" or name.startswith("solo."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, BlockSolo())
    """
    result = run_python(textwrap.dedent(block) + textwrap.dedent(REGISTER), tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert "solo-learn is not importable" in line
    assert "scripts/install_solo_learn.sh" in line


def test_old_solo_learn_release_is_named_too_old(tmp_path):
    # PyPI's 1.0.2 layout: a `solo` package without solo.args.pretrain (argparse era)
    old = tmp_path / "old_site" / "solo"
    (old / "args").mkdir(parents=True)
    (old / "__init__.py").write_text("")
    (old / "args" / "__init__.py").write_text("")
    (old / "args" / "setup.py").write_text("def parse_args_pretrain(): ...\n")
    code = f"import sys; sys.path.insert(0, {str(old.parent)!r})\n" + textwrap.dedent(REGISTER)
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert "too old (no solo.args.pretrain.parse_cfg)" in line
    assert "1.0.2 does not work" in line


def test_importing_the_losses_loads_no_trainer(tmp_path):
    # the losses work on plain tensors: neither solo-learn, Lightning nor timm may come along
    code = """
        import sys
        import solo_stablerep
        from solo_stablerep.losses import image_text_contrastive_loss
        from solo_stablerep.losses import multi_positive_contrastive_loss
        heavy = [m for m in ("solo", "lightning", "pytorch_lightning", "timm") if m in sys.modules]
        print("HEAVY:", heavy)
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout.splitlines()


@requires_solo
def test_importing_the_methods_registers_them_in_solo_learn(tmp_path):
    code = """
        import solo.methods
        assert "stablerep" not in solo.methods.METHODS
        import solo_stablerep.methods
        registered = solo.methods.METHODS["stablerep_pp"]
        print("REGISTERED:", registered is solo_stablerep.methods.StableRepPP)
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "REGISTERED: True" in result.stdout.splitlines()
