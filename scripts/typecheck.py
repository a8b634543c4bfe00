"""Type-check the package: ``mypy -p petlbench`` with the repo's ``[tool.mypy]`` config.

    python scripts/typecheck.py [MYPY ARGUMENTS...]

The repo's top-level folders are the subpackages of ``petlbench`` through pyproject's
``[tool.setuptools.package-dir]`` (``methods/`` is ``petlbench.methods``), which mypy cannot follow
from the editable install. So this builds that layout as a tree of symbolic links in a temporary
folder, runs ``python -m mypy -p petlbench --config-file <repo>/pyproject.toml`` there, prints mypy's
output with the paths written as repo paths (``methods/vpt.py:12: error: ...``) and exits with mypy's
status. Standard library only; CI runs it after ruff (.ci/run, tox -e typecheck).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "petlbench"


def package_dirs(pyproject: Path) -> dict[str, str]:
    """``[tool.setuptools.package-dir]``: dotted package name -> folder, relative to the repo."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: read the one flat table by hand
        match = re.search(r"^\[tool\.setuptools\.package-dir\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        body = match.group(1) if match else ""
        return dict(re.findall(r'^\s*"([^"]+)"\s*=\s*"([^"]+)"', body, re.M))
    table = tomllib.loads(text).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {str(k): str(v) for k, v in table.items()}


def build_tree(root: Path, mapping: dict[str, str]) -> dict[str, str]:
    """Link ``root/petlbench`` as the installed package looks; returns link prefix -> repo prefix
    (for rewriting mypy's paths). Nested subpackages must lie inside their parent's folder."""
    top = REPO / mapping.get(PACKAGE, PACKAGE)
    pkg = root / PACKAGE
    pkg.mkdir()
    for source in sorted(top.glob("*.py")):
        (pkg / source.name).symlink_to(source)
    prefixes = {f"{PACKAGE}/": f"{top.relative_to(REPO).as_posix()}/"}
    for name, folder in sorted(mapping.items()):
        parts = name.split(".")
        if parts[0] != PACKAGE or len(parts) == 1:
            continue
        if len(parts) > 2:  # e.g. petlbench.backbones.ofa: found through its parent's link
            parent = mapping.get(".".join(parts[:-1]))
            if parent is None or Path(parent) / parts[-1] != Path(folder):
                raise SystemExit(f"typecheck: {name} = {folder!r} is not inside its parent package's folder")
            continue
        (pkg / parts[1]).symlink_to(REPO / folder, target_is_directory=True)
        prefixes[f"{PACKAGE}/{parts[1]}/"] = f"{Path(folder).as_posix()}/"
    return prefixes


def to_repo_path(line: str, prefixes: dict[str, str]) -> str:
    """``petlbench/methods/vpt.py:3: ...`` -> ``methods/vpt.py:3: ...`` (the longest prefix wins)."""
    for link in sorted(prefixes, key=len, reverse=True):
        if line.startswith(link):
            return prefixes[link] + line[len(link) :]
    return line


def main(argv: list[str]) -> int:
    pyproject = REPO / "pyproject.toml"
    with tempfile.TemporaryDirectory(prefix="petlbench-typecheck-") as tmp:
        prefixes = build_tree(Path(tmp), package_dirs(pyproject))
        cmd = [sys.executable, "-m", "mypy", "-p", PACKAGE, "--config-file", str(pyproject), *argv]
        env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
    for stream, text in ((sys.stdout, proc.stdout), (sys.stderr, proc.stderr)):
        for line in text.splitlines():
            print(to_repo_path(line, prefixes), file=stream)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
