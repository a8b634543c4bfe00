"""The package's shape: imports point the way DESIGN section 2 says, and no module imports itself
back through others (no import circles). Every import counts, function-local ones too (a lazy import
is still a dependency); imports under ``if TYPE_CHECKING:`` do not (they never run).

DESIGN's directions: ``methods -> backbones``; ``benchmarks`` depends on neither; ``harness ->
methods, backbones, benchmarks``; ``leaderboard -> harness.store`` (and ``harness.spec``, the
identity a record is checked against, and ``harness.spec_argv``, a spec as ``bench run``
arguments); the CLI layer (every module under ``petlbench.cli``) imports everything and nothing
imports it; ``petlbench.errors`` and ``petlbench.registry`` (which imports only
``petlbench.errors``) are shared by all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("backbones", "methods", "benchmarks", "harness", "leaderboard", "cli")
ALLOWED = {
    "backbones": {"backbones"},
    "methods": {"methods", "backbones"},
    "benchmarks": {"benchmarks"},
    "harness": {"harness", "methods", "backbones", "benchmarks"},
    "leaderboard": {"leaderboard"},
    "cli": set(PARTS),
}
LEADERBOARD_MAY_IMPORT = {
    "petlbench.harness.store",
    "petlbench.harness.spec",
    "petlbench.harness.spec_argv",  # the reproduce command: a spec as `bench run` arguments
}
CLI = "cli"  # the part that may import every part and that no other part imports
SHARED = {"petlbench.errors", "petlbench.registry"}

# Known debt, each to be removed by the change that fixes it (issue 16): the test fails on any new
# violation, and on an entry here that no longer exists (so the list only shrinks).
KNOWN_DIRECTIONS: set[tuple[str, str]] = set()
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    out = {name: ROOT / "petlbench" / f"{name.split('.')[1]}.py" for name in SHARED}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            rel = list(path.relative_to(ROOT).with_suffix("").parts)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out["petlbench." + ".".join(rel)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    return module.split(".")[1]


def _direction_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for source, targets in graph.items():
        for target in targets:
            if source in SHARED:
                if target != "petlbench.errors":
                    bad.add((source, target))
                continue
            if target in SHARED:
                continue
            if _part(target) == CLI and _part(source) != CLI:
                bad.add((source, target))
            elif _part(source) == "leaderboard" and target in LEADERBOARD_MAY_IMPORT:
                continue
            elif _part(target) not in ALLOWED[_part(source)]:
                bad.add((source, target))
    return bad


def _circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[frozenset[str]] = set()
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_point_the_way_design_says():
    violations = _direction_violations(_graph())
    assert violations - KNOWN_DIRECTIONS == set(), "imports against DESIGN section 2"
    assert KNOWN_DIRECTIONS - violations == set(), "fixed: remove it from KNOWN_DIRECTIONS"


def test_no_import_circles():
    circles = _circles(_graph())
    assert circles - KNOWN_CIRCLES == set(), "new import circles"
    assert KNOWN_CIRCLES - circles == set(), "fixed: remove it from KNOWN_CIRCLES"


def test_the_checks_catch_what_they_claim():
    """The walker sees lazy imports and relative imports, skips TYPE_CHECKING, and the checks flag a
    planted backbone -> benchmarks import, a planted import of the CLI, a shared module importing a
    part, and a planted circle."""
    modules = _modules()
    micro = _imports("petlbench.backbones.micro", modules["petlbench.backbones.micro"], modules)
    assert "petlbench.backbones.clip" in micro  # relative import
    name = "petlbench.harness.objectives"
    objectives = _imports(name, modules[name], modules)
    assert "petlbench.harness.objectives.seq2seq" in objectives  # a function-local import
    coop = _imports(
        "petlbench.benchmarks.datasets.coop", modules["petlbench.benchmarks.datasets.coop"], modules
    )
    assert "petlbench.benchmarks.suites" not in coop  # only under TYPE_CHECKING there
    planted = {
        "petlbench.backbones.micro": {"petlbench.benchmarks.synthetic.world"},
        "petlbench.harness.plan": {"petlbench.cli.run"},
        "petlbench.methods.vpt": {"petlbench.backbones.slots"},
        "petlbench.backbones.slots": {"petlbench.backbones.tower"},
        "petlbench.backbones.tower": {"petlbench.backbones.slots"},
        "petlbench.registry": {"petlbench.errors", "petlbench.methods.base"},
        "petlbench.methods.registry": {"petlbench.registry"},
    }
    assert _direction_violations(planted) == {
        ("petlbench.backbones.micro", "petlbench.benchmarks.synthetic.world"),
        ("petlbench.harness.plan", "petlbench.cli.run"),
        ("petlbench.registry", "petlbench.methods.base"),
    }
    assert _circles(planted) == {frozenset({"petlbench.backbones.slots", "petlbench.backbones.tower"})}


def test_the_hf_loader_needs_only_the_readme_install():
    """`datasets` (the `hf` loader) is a core dependency, not an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert {"datasets", "pyarrow"} <= names


def test_every_subpackage_folder_is_installed():
    """pyproject lists every subpackage folder (a new folder left out would not be installed)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        "petlbench." + ".".join(init.parent.relative_to(ROOT).parts)
        for part in PARTS
        for init in (ROOT / part).rglob("__init__.py")
    }
    assert folders and folders - listed == set()
