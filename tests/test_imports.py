"""The import graph of the two packages has no loop: no module imports (at its top or inside a
function) a module that imports it back, directly or through others."""

import ast

from helpers import REPO

PACKAGES = ("solo_stablerep", "data_gen")


def _modules() -> dict:
    """Dotted module name -> source file, for every module of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(module: str, path, node, modules: dict) -> set:
    """The modules of ours that an import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules.keys()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        target = ".".join(filter(None, [package, node.module]))
    else:
        target = node.module
    return ({target} | {f"{target}.{alias.name}" for alias in node.names}) & modules.keys()


def import_graph() -> dict:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        imports = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports |= _imported(module, path, node, modules)
        graph[module] = imports - {module}
    return graph


def find_loop(graph: dict):
    """One import loop as a list of modules (first == last), or None."""
    state = {}  # module -> "open" while on the current path, "done" once fully explored

    def visit(module, path):
        state[module] = "open"
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                return path[path.index(dependency) :] + [dependency]
            if dependency not in state:
                loop = visit(dependency, path + [dependency])
                if loop:
                    return loop
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            loop = visit(module, [module])
            if loop:
                return loop
    return None


def test_the_loop_finder_finds_a_loop():
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "solo_stablerep.data.index" in graph["solo_stablerep.data.config"]  # the graph is read
    assert find_loop(graph) is None, " -> ".join(find_loop(graph))


def test_bench_imports_nothing_from_tests():
    # benchmarks run without the test suite: what both need lives in the packages
    test_modules = {path.stem for path in (REPO / "tests").rglob("*.py")} | {"tests"}
    for script in (REPO / "bench").glob("*.py"):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = {node.module.split(".")[0]}
            else:
                names = set()
            found = names & test_modules
            assert not found, f"{script.name} imports {found} from tests/"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "tests", f"{script.name} builds a path into tests/"
