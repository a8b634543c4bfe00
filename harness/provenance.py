"""What produced a result: package versions, git commit (+ dirty flag), hardware, and whatever the
caller adds (suite version and hash, data hashes, device)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "petlbench",
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "fvcore",
    "adversarial-robustness-toolbox",
    "numpy",
    "scikit-learn",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout petlbench is imported from (None outside git)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


@lru_cache(maxsize=1)
def _proc_cpuinfo() -> str | None:
    """This machine's ``/proc/cpuinfo``, read once per process (every run's provenance asks)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")


def cpu_details(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name and the vector-instruction flags that pick the math kernels (Linux
    ``/proc/cpuinfo``; empty elsewhere). Float sums round differently across kernels, so a run
    reproduces bit for bit only where these match (a committed micro-clip cell moves by one test
    image between two x86_64 machines)."""
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
        if cpuinfo is None:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    out: dict[str, Any] = {"simd": [f for f in SIMD_FLAGS if f in flags]}
    if fields.get("model name"):
        out["model"] = fields["model name"]
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        **{f"cpu_{k}": v for k, v in cpu_details().items()},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def collect_provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
