"""The data manifest, ``<data root>/petlbench-manifest.json``: paths relative to the data root mapped
to the sha256 and size each file had when ``bench data check`` first saw it. ``bench data check``
writes and compares it; the run's leakage check reads it to compare files by content cheaply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

MANIFEST_NAME = "petlbench-manifest.json"
MANIFEST_FORMAT = "petlbench.manifest/1"


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"manifest {path} cannot be read ({err}); delete it to write a fresh one") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(data.get("files"), dict)
    ):
        raise UserError(
            f"manifest {path} is not a petlbench manifest ({MANIFEST_FORMAT}); delete it or pass --manifest"
        )
    return data["files"]


def write_manifest(path: Path, files: dict[str, dict[str, Any]]) -> None:
    payload = {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
