"""Every command of the README, docs/*.md and bench/README.md is run, and the pages' links resolve.

The line before each ``bash`` / ``python`` block says how the block is checked (docs/README.md
lists the kinds): ``run`` (run here as printed), ``compose`` (solo-stablerep-pretrain commands:
config composed, parsed and its method built here, on tiny data), ``help`` (scripts needing a GPU
or minutes: started here with ``--help``), ``ci`` (run by .ci/run), or test ids (run by those
tests: they must exist and name the program and each option the command uses).
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, make_manifest_dataset, requires_solo, solid_image, write_image_folder

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
MARKER = re.compile(r"<!-- doc-test: (.+?) -->")
COMMAND_LANGUAGES = ("bash", "python")
README_MAX_LINES = 250

# A program, and the names by which a test file runs it: console script, module as a subprocess
# argument, the function behind it.
PROGRAMS = {
    "stablerep-generate": ("stablerep-generate", '"data_gen"', "data_gen.cli"),
    "solo-stablerep-pretrain": (
        "solo-stablerep-pretrain",
        '"solo_stablerep.pretrain"',
        "run_pretrain_command(",
    ),
    "stablerep-demo": ("stablerep-demo", '"solo_stablerep.demo"'),
    "solo-stablerep-eval": ("solo-stablerep-eval", '"solo_stablerep.eval"', "eval.cli import main"),
}
MODULES = {
    "data_gen": "stablerep-generate",
    "solo_stablerep.pretrain": "solo-stablerep-pretrain",
    "solo_stablerep.demo": "stablerep-demo",
    "solo_stablerep.eval": "solo-stablerep-eval",
}
LAUNCHERS = ("srun", "torchrun")
SUBCOMMANDS = {"stablerep-generate": ("merge", "convert"), "solo-stablerep-eval": ("export",)}
OVERRIDE = re.compile(r"^[+~]?([A-Za-z_][\w.]*)=")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    language: str
    check: str  # what the marker says; "" without one
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
            blocks.append(
                Block(
                    page,
                    i + 1,
                    lines[i][3:].strip(),
                    marker.group(1) if marker else "",
                    "\n".join(lines[i + 1 : end]),
                )
            )
            i = end
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
COMMAND_BLOCKS = [b for b in BLOCKS if b.language in COMMAND_LANGUAGES]


def blocks_of(kind: str) -> list[Block]:
    return [
        b
        for b in COMMAND_BLOCKS
        if (b.check.startswith("tests/") if kind == "tests" else b.check == kind)
    ]


def commands(block: Block) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped,
    ``for VAR in ...; do ... done`` unrolled."""
    logical = re.sub(r"\\\n\s*", " ", block.text).splitlines()
    result, loop = [], None
    for line in logical:
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "for":  # for VAR in A B C; do
            loop = (words[1], [w.rstrip(";") for w in words[3:] if w not in ("do", ";")], [])
        elif words[0] == "done":
            var, values, body = loop
            result += [
                [w.replace(f"${var}", v) for w in command] for v in values for command in body
            ]
            loop = None
        else:
            (loop[2] if loop else result).append(words)
    return result


def program(words: list[str]) -> tuple[str, list[str]]:
    """(program, its arguments) of a command, a launcher (srun, torchrun) dropped."""
    if words[0] in LAUNCHERS:
        start = next(i for i, w in enumerate(words) if w == "-m" or w in PROGRAMS)
        words = ["python"] + words[start:] if words[start] == "-m" else words[start:]
    if words[0] in ("python", "bash"):
        if words[1] == "-m":
            return MODULES[words[2]], words[3:]
        return words[1], words[2:]
    return words[0], words[1:]


def options(name: str, args: list[str]) -> list[str]:
    """The options and Hydra override keys a command uses (and a subcommand, if any)."""
    found = [args[0]] if args and args[0] in SUBCOMMANDS.get(name, ()) else []
    for arg in args:
        if arg.startswith("--"):
            found.append(arg.split("=")[0])
        elif OVERRIDE.match(arg):
            found.append(OVERRIDE.match(arg).group(1))
    return found


# ------------------------------------------------------------------------------ every block checked


def test_every_block_has_a_language_and_every_command_block_a_check():
    untyped = [b.id for b in BLOCKS if not b.language]
    assert not untyped, f"fenced blocks without a language (bash, python, text ...): {untyped}"
    kinds = ("run", "compose", "help", "ci", "tests")
    unchecked = [
        b.id for b in COMMAND_BLOCKS if not b.check or b.check.split()[0].split("/")[0] not in kinds
    ]
    assert not unchecked, (
        "command blocks without a <!-- doc-test: ... --> line before them (docs/README.md): "
        f"{unchecked}"
    )


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= README_MAX_LINES


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}: no such file"
        if anchor:
            headings = re.findall(
                r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.MULTILINE
            )
            assert anchor in {_slug(h) for h in headings}, (
                f"{page.name} links to {target}: no such heading"
            )


# ------------------------------------------------------------------------------------------ run


@pytest.mark.parametrize("block", blocks_of("run"), ids=lambda b: b.id)
def test_run_blocks_run_as_printed(block, tmp_path):
    bin_dir = str(Path(sys.executable).parent)  # console scripts and `python` of this venv
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if block.language == "python":
        command = [sys.executable, "-c", block.text]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.text]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr[-3000:]}"


# -------------------------------------------------------------------------------------- compose


def _tiny_data(path: str, config_path: str, overrides: list[str], root: Path) -> Path:
    """A tiny data set of the kind the command's overrides ask for, in place of ``path``."""
    folder = root / path.strip("/").replace("/", "_")
    if folder.exists():
        return folder
    values = dict(o.split("=", 1) for o in overrides if OVERRIDE.match(o))
    layout = values.get("data.synthetic.layout", "manifest")
    if config_path.endswith("custom"):
        return write_image_folder(folder)
    if layout == "authors":
        roots = values["data.synthetic.roots"].strip("[]").split(",")
        rows = [f"{c}.png,caption {c}" for c in range(4)]
        (folder / values["data.synthetic.csv"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / values["data.synthetic.csv"]).write_text("\n".join(rows) + "\n")
        for k, seed in enumerate(roots):
            for c in range(4):
                solid_image(folder / seed / f"{c}.png", (16 * k, 16 * c, 0))
        return folder
    make_manifest_dataset(
        folder if layout == "manifest" else root / "manifest_source", 4, 10, ["a", "b"]
    )
    if layout == "webdataset":
        from data_gen.convert import convert

        convert(root / "manifest_source", folder, progress=False)
    return folder


COMPOSE = [(block, words) for block in blocks_of("compose") for words in commands(block)]


@requires_solo
@pytest.mark.parametrize(
    "block, words", COMPOSE, ids=[f"{b.id}:{' '.join(w)[:60]}" for b, w in COMPOSE]
)
def test_compose_commands_parse_and_build_their_method(block, words, tmp_path):
    from helpers import compose_parsed_cfg
    from solo.methods import METHODS

    name, args = program(words)
    assert name == "solo-stablerep-pretrain", (
        f"{block.id}: compose checks solo-stablerep-pretrain commands only"
    )
    config_path = args[args.index("--config-path") + 1]
    config_name = args[args.index("--config-name") + 1]
    overrides = [a for a in args if OVERRIDE.match(a)]
    overrides = [
        f"{o.split('=')[0]}={_tiny_data(o.split('=', 1)[1], config_path, overrides, tmp_path)}"
        if o.split("=", 1)[1].startswith("/data/")
        else o
        for o in overrides
    ]
    cfg = compose_parsed_cfg(REPO / config_path, config_name, overrides)
    METHODS[cfg.method](cfg)


# ----------------------------------------------------------------------------------------- help


def test_help_commands_name_existing_scripts_and_options():
    wanted = [program(words) for block in blocks_of("help") for words in commands(block)]
    scripts = sorted({name for name, _ in wanted})
    assert all(name.endswith(".py") and (REPO / name).is_file() for name in scripts), scripts
    # one process for all: each script's --help printed in turn (their imports are shared), each
    # with its folder first on sys.path as `python bench/x.py` has it
    collect = (
        "import contextlib, io, json, os, runpy, sys\n"
        "helps = {}\n"
        "for script in sys.argv[1:]:\n"
        "    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))\n"
        "    sys.argv, out = [script, '--help'], io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_path(script, run_name='__main__')\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    helps[script] = out.getvalue()\n"
        "print(json.dumps(helps))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", collect, *scripts],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    helps = json.loads(done.stdout.splitlines()[-1])
    for name, args in wanted:
        assert "usage:" in helps[name], f"{name} --help printed no usage"
        missing = [o for o in options(name, args) if o not in helps[name]]
        assert not missing, f"{name} has no option {missing}"


# ------------------------------------------------------------------------------------------- ci


def _run_by_ci() -> str:
    """The text of .ci/run and of every script it runs, directly or through others."""
    seen, todo = set(), [".ci/run"]
    while todo:
        script = todo.pop()
        if script not in seen:
            seen.add(script)
            todo += re.findall(
                r"bash (scripts/[\w./-]+\.sh)", (REPO / script).read_text(encoding="utf-8")
            )
    return "\n".join((REPO / s).read_text(encoding="utf-8") for s in sorted(seen))


@pytest.mark.parametrize("block", blocks_of("ci"), ids=lambda b: b.id)
def test_ci_commands_are_run_by_ci(block):
    ci = _run_by_ci()
    for words in commands(block):
        assert words[0] == "bash" and f"bash {words[1]}" in ci, (
            f"{block.id}: CI does not run {' '.join(words)}"
        )


# ---------------------------------------------------------------------------------------- tests


def _test_source(test_ids: list[str]) -> str:
    """The source a block's tests run: the named test functions (a file alone names all of its
    tests) with what their files hold besides tests (fixtures, constants, helpers)."""
    named = {}
    for test_id in test_ids:
        path, _, function = test_id.partition("::")
        named.setdefault(path, set()).add(function or "*")
    sources = []
    for path, functions in named.items():
        lines = (REPO / path).read_text(encoding="utf-8").splitlines(keepends=True)
        tests = {
            n.name: n
            for n in ast.parse("".join(lines)).body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
        }
        assert functions <= set(tests) | {"*"}, f"{path}: no test {sorted(functions - set(tests))}"
        for name, node in tests.items():
            if "*" not in functions and name not in functions:
                start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
                lines[start : node.end_lineno] = [""] * (node.end_lineno - start)
        sources.append("".join(lines))
    return "\n".join(sources)


@pytest.mark.parametrize("block", blocks_of("tests"), ids=lambda b: b.id)
def test_commands_run_by_tests_are_named_by_them(block):
    source = _test_source(block.check.split())
    # options may also be given by the helpers the tests run commands through
    with_helpers = source + (REPO / "tests" / "helpers.py").read_text(encoding="utf-8")
    for words in commands(block):
        name, args = program(words)
        assert any(alias in source for alias in PROGRAMS.get(name, (Path(name).name,))), (
            f"{block.id}: the tests named do not run {name}"
        )
        missing = [o for o in options(name, args) if o not in with_helpers]
        assert not missing, (
            f"{block.id}: the tests named never use {missing} of `{' '.join(words)}`"
        )
