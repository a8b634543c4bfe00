"""A run's identity: method + config + backbone + task + protocol + seed + measurement options.

The run id is the SHA-256 of the spec's canonical JSON (sorted keys, no whitespace), so two
invocations that would compute the same thing share one row in the store and the second is skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


@dataclass(frozen=True)
class RunSpec:
    method: str
    method_config: dict[str, Any]
    backbone: str
    suite: str
    suite_version: str
    task: str
    protocol: dict[str, Any]
    seed: int
    stage: str = "final"
    measure: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
