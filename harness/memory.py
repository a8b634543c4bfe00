"""Peak memory of a block of work: CUDA max-allocated on GPU, peak resident set size on CPU.

On Linux the process's RSS high-water mark (VmHWM) can be reset by writing 5 to
/proc/self/clear_refs, so a CPU measurement covers only the block; where the reset is refused the
value is the process's lifetime peak and ``scope`` says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_hwm_mib() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _lifetime_peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.result()``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.scope = "block"
        self._peak_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                _CLEAR_REFS.write_text("5")
            except OSError:
                self.scope = "process lifetime"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_mib() if self.scope == "block" else None
            if hwm is None:
                self.scope = "process lifetime"
                hwm = _lifetime_peak_rss_mib()
            self._peak_mib = hwm

    def result(self) -> dict[str, Any]:
        kind = "cuda max allocated" if self.device.type == "cuda" else "peak RSS"
        return {"peak_mib": self._peak_mib, "kind": kind, "scope": self.scope}
