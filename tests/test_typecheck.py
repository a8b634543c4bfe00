"""scripts/typecheck.py: the link tree it hands mypy is the installed package's layout, and mypy's
paths come back as repo paths. The full check (about half a minute) is the slow test; CI runs the
script itself (.ci/run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("typecheck_script", ROOT / "scripts" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tree_has_every_installed_package(tmp_path: Path) -> None:
    tc = _script()
    prefixes = tc.build_tree(tmp_path, tc.package_dirs(ROOT / "pyproject.toml"))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for name in packages:
        folder = tmp_path.joinpath(*name.split("."))
        assert (folder / "__init__.py").is_file(), name
    assert (tmp_path / "petlbench" / "methods").resolve() == ROOT / "methods"
    assert (tmp_path / "petlbench" / "errors.py").resolve() == ROOT / "petlbench" / "errors.py"
    assert prefixes["petlbench/methods/"] == "methods/"
    assert prefixes["petlbench/"] == "petlbench/"


def test_mypy_paths_become_repo_paths() -> None:
    tc = _script()
    prefixes = {"petlbench/": "petlbench/", "petlbench/methods/": "methods/"}
    line = 'petlbench/methods/vpt.py:12: error: Name "x" is not defined  [name-defined]'
    assert tc.to_repo_path(line, prefixes) == line.removeprefix("petlbench/")
    assert tc.to_repo_path("petlbench/errors.py:3: note: x", prefixes) == "petlbench/errors.py:3: note: x"
    assert tc.to_repo_path("Found 1 error in 1 file", prefixes) == "Found 1 error in 1 file"


def test_package_dirs_without_tomllib_reads_the_same_table(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = _script()
    expected = tc.package_dirs(ROOT / "pyproject.toml")
    assert expected["petlbench.harness"] == "harness" and expected["petlbench.cli"] == "cli"
    assert len(expected) == 7
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises, as on Python 3.10
    assert tc.package_dirs(ROOT / "pyproject.toml") == expected


@pytest.mark.slow
def test_package_checks_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert _script().main([]) == 0
    assert capsys.readouterr().out.startswith("Success: no issues found")


def test_no_module_of_the_package_is_exempt_from_the_type_check() -> None:
    """Every petlbench module is checked: an ``ignore_errors`` override may name only third-party code."""
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    exempt = [m for o in overrides if o.get("ignore_errors") for m in o["module"]]
    exempt = [m for m in exempt if m.startswith("petlbench")]
    assert exempt == []
