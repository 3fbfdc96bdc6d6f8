"""Each method's ``method_kwargs`` table (``SETTINGS``): the docs' tables are its rows, its defaults
pass its own rules, and a value of the wrong type or out of range is one line, also through the
entry point."""

import re
import sys

import pytest
from helpers import (
    PRETRAIN_CONFIGS,
    REPO,
    SMOKE_OVERRIDES,
    compose_parsed_cfg,
    make_manifest_dataset,
    requires_solo,
    run_pretrain_command,
)

from solo_stablerep.errors import INPUT_ERROR_EXIT

pytestmark = requires_solo

CUSTOM, SYNTHETIC = PRETRAIN_CONFIGS / "custom", PRETRAIN_CONFIGS / "synthetic"
SYNCLR_CROPS = ["augmentations.0.crop_size=32", "augmentations.1.crop_size=16"]


def markdown_table(settings) -> list[str]:
    """The docs' rendering of a settings table: key, default, allowed values, meaning."""

    def cell(value) -> str:
        if value is None:
            return "null"
        return f"`{value}`" if isinstance(value, str) else str(value)

    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for s in settings:
        allowed = s.rule.text.removeprefix("be ")
        rows.append(f"| `{s.name}` | {cell(s.default)} | {allowed} | {s.meaning} |")
    return rows


def tables_of_section(page: str, heading: str) -> list[list[str]]:
    text = (REPO / page).read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    tables, table = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            tables.append(table)
            table = []
    return tables


def assert_table(got: list[str], settings) -> None:
    expected = markdown_table(settings)
    assert got == expected, "the docs' table is not the code's; paste:\n" + "\n".join(expected)


def test_readme_table_is_stablerep_then_stablerep_pp():
    from solo_stablerep.methods import StableRep, StableRepPP

    # the README's sentence: StableRep's keys end at views_per_backbone_call, StableRep++ has all
    assert StableRepPP.SETTINGS[: len(StableRep.SETTINGS)] == StableRep.SETTINGS
    assert StableRep.SETTINGS[-1].name == "views_per_backbone_call"
    (table,) = tables_of_section("README.md", "## `method_kwargs`")
    assert_table(table, StableRepPP.SETTINGS)


def test_synclr_page_table_is_synclrs():
    from solo_stablerep.methods import SynCLR

    table = tables_of_section("docs/synclr.md", "## Settings (`method_kwargs`)")[0]
    assert_table(table, SynCLR.SETTINGS)


def test_every_default_passes_its_rule_and_every_key_is_declared_once():
    from solo_stablerep.methods import METHODS

    for method in METHODS.values():
        names = [s.name for s in method.SETTINGS]
        assert len(names) == len(set(names)), method
        for setting in method.SETTINGS:
            assert setting.rule.accepts(setting.default), (method, setting.name)


def stablerep_cfg(image_folder, *overrides):
    extra = ["augmentations.0.crop_size=32", f"data.train_path={image_folder}", *overrides]
    return compose_parsed_cfg(CUSTOM, "stablerep.yaml", SMOKE_OVERRIDES + extra)


def synclr_cfg(image_folder, *overrides):
    extra = [*SYNCLR_CROPS, "method_kwargs.ibot_weight=0", f"data.train_path={image_folder}"]
    return compose_parsed_cfg(CUSTOM, "synclr.yaml", SMOKE_OVERRIDES + extra + list(overrides))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    make_manifest_dataset(root, 8, 2, class_names=["a", "b"], size=32)
    return root


def pp_cfg(root, *overrides):
    extra = ["augmentations.0.crop_size=32", f"data.train_path={root}", "data.synthetic.n_img=2"]
    return compose_parsed_cfg(
        SYNTHETIC, "stablerep_pp.yaml", SMOKE_OVERRIDES + extra + [*overrides]
    )


# one case per rule kind and per hint: the key, what it must be, what it got
@pytest.mark.parametrize(
    "method, override, message",
    [
        ("stablerep", "method_kwargs.temperature=abc", "temperature must be > 0, got 'abc'"),
        ("stablerep", "method_kwargs.proj_hidden_dim=2.5", "must be an integer >= 1, got 2.5"),
        ("stablerep", "method_kwargs.proj_output_dim=true", "must be an integer >= 1, got True"),
        (
            "stablerep",
            "++method_kwargs.views_per_backbone_call=two",
            "views_per_backbone_call must be an integer >= 1, got 'two'",
        ),
        ("stablerep_pp", "method_kwargs.w1=abc", "method_kwargs.w1 must be >= 0, got 'abc'"),
        (
            "stablerep_pp",
            "method_kwargs.w2=abc",
            "w2 must be > 0, got 'abc' (without the image-text term use method=stablerep)",
        ),
        (
            "stablerep_pp",
            "method_kwargs.context_length=1",
            "context_length must be an integer >= 2, got 1 (<sot> and <eot>)",
        ),
        (
            "stablerep_pp",
            "method_kwargs.zero_shot_template=5",
            "zero_shot_template must contain {name}, got 5",
        ),
        (
            "stablerep_pp",
            "method_kwargs.class_names=abc",
            "class_names must be null or a list of names, got 'abc'",
        ),
        ("synclr", "method_kwargs.ibot_weight=abc", "ibot_weight must be >= 0, got 'abc'"),
        ("synclr", "+method_kwargs.ibot_mask_ratio=2", "must be in [0, 1], got 2"),
        ("synclr", "method_kwargs.avoid_local_global_same=maybe", "must be true or false"),
        ("synclr", "+method_kwargs.head_norm=5", "head_norm must be one of ['bn', 'ln'], got 5"),
        ("synclr", "method_kwargs.queue_size=-8", "queue_size must be an integer >= 0, got -8"),
        ("synclr", "+method_kwargs.weight_decay_end=abc", "must be null or >= 0, got 'abc'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(image_folder, manifest, method, override, message):
    from solo.methods import METHODS

    from solo_stablerep.errors import InputError

    build = {"stablerep": stablerep_cfg, "synclr": synclr_cfg}.get(method)
    cfg = build(image_folder, override) if build else pp_cfg(manifest, override)
    with pytest.raises(InputError, match=re.escape(message)) as error:
        METHODS[method](cfg)
    assert "\n" not in str(error.value)


# issue 29's cases: a TypeError traceback before the table
@pytest.mark.parametrize(
    "config_dir, config_name, overrides, message",
    [
        (
            CUSTOM,
            "stablerep.yaml",
            ["method_kwargs.temperature=abc"],
            "method_kwargs.temperature must be > 0, got 'abc'",
        ),
        (
            SYNTHETIC,
            "stablerep_pp.yaml",
            ["dali.device=cpu", "data.synthetic.n_img=2", "method_kwargs.w1=abc"],
            "w1 must be >= 0, got 'abc'",
        ),
        (
            SYNTHETIC,
            "stablerep_pp.yaml",
            ["dali.device=cpu", "data.synthetic.n_img=2", "method_kwargs.zero_shot_template=5"],
            "zero_shot_template must contain {name}, got 5",
        ),
        (
            CUSTOM,
            "synclr.yaml",
            [*SYNCLR_CROPS, "method_kwargs.ibot_weight=abc"],
            "ibot_weight must be >= 0, got 'abc'",
        ),
    ],
    ids=["temperature", "w1", "zero_shot_template", "ibot_weight"],
)
def test_entry_point_reports_a_wrong_type_in_one_line(
    image_folder, manifest, tmp_path, config_dir, config_name, overrides, message
):
    train_path = manifest if config_dir == SYNTHETIC else image_folder
    result = run_pretrain_command(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        config_dir,
        config_name,
        tmp_path,
        f"data.train_path={train_path}",
        "augmentations.0.crop_size=32",
        *overrides,
    )
    assert result.returncode == INPUT_ERROR_EXIT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("solo-stablerep-pretrain: error: ")
    assert message in last_line
