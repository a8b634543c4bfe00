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


NOT_IDENTITY = ("protocol_source", "protocol_refs", "deviations")

# Version 2 made ``pretrained`` a field (version 1 hid it in the protocol as ``backbone_pretrained``).
# A version-1 spec still hashes as it did, so its stored runs and exported records keep their ids.
SPEC_VERSION = 2
LEGACY_PRETRAINED_KEY = "backbone_pretrained"


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
    pretrained: bool = True  # False: the backbone's architecture with random weights (--random-init)
    version: int = SPEC_VERSION
    # What planning knew about the protocol: the layer each protocol value came from and the
    # reference it reproduces, and the named deviations from the reference protocol. Derived from
    # the fields above (and the suite), so they are recorded but are not part of the run's identity.
    protocol_source: dict[str, str] = field(default_factory=dict, compare=False)
    protocol_refs: dict[str, str] = field(default_factory=dict, compare=False)
    deviations: list[dict[str, str]] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that make the run: what the hash is taken of. A version-1 spec is hashed in its
        own shape (``pretrained`` inside the protocol, no version), so its run id never changes."""
        data = self.to_dict()
        for key in NOT_IDENTITY:
            data.pop(key)
        if self.version == 1:
            pretrained = data.pop("pretrained")
            data.pop("version")
            data["protocol"] = {**data["protocol"], LEGACY_PRETRAINED_KEY: pretrained}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """A spec from its stored form; one without ``version`` is version 1, whose ``pretrained``
        is read from the protocol (and leaves it)."""
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        if "version" not in data:
            protocol = dict(known.get("protocol") or {})
            known["pretrained"] = bool(protocol.pop(LEGACY_PRETRAINED_KEY, data.get("pretrained", True)))
            known["protocol"] = protocol
            known["version"] = 1
        return cls(**known)

    def canonical_json(self) -> str:
        return canonical_json(self.identity())

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
