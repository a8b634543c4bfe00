"""A run spec as the ``bench run`` arguments that plan it again (same run id), for the leaderboard's
reproduce command and anything else that must name a run as a command. The CLI's parser reads these
arguments back (tests/harness/test_spec_argv.py round-trips them through planning)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .spec import LEGACY_PRETRAINED_KEY


def cli_value(value: Any) -> str:
    """A value as `bench run --set` reads it back (JSON when it parses, else the raw string)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def eps_text(eps: float) -> str:
    """An FGSM epsilon as ``--fgsm-eps`` reads it: ``k/255`` when it is a whole multiple of 1/255."""
    k = eps * 255
    if abs(k - round(k)) < 1e-9 and round(k) != 0:
        return f"{round(k)}/255"
    return repr(eps)


def run_argv(spec: dict[str, Any], seeds: Sequence[int], base_protocol: dict[str, Any]) -> list[str]:
    """``bench``'s arguments (``run --method ...``) that plan ``spec`` (a ``RunSpec.to_dict()``, its
    seed ignored) for ``seeds``. ``base_protocol`` is the suite's protocol for the spec's task and
    method (``Suite.protocol_for(...).to_dict()``, empty when unknown): only fields that differ from
    it become ``--protocol`` options."""
    argv = [
        "run",
        "--method",
        spec["method"],
        "--suite",
        spec["suite"],
        "--backbone",
        spec["backbone"],
        "--tasks",
        spec["task"],
        "--seeds",
        ",".join(str(s) for s in sorted(seeds)),
    ]
    for key, value in sorted((spec.get("method_config") or {}).items()):
        argv += ["--set", f"{key}={cli_value(value)}"]
    protocol = dict(spec.get("protocol") or {})
    legacy = protocol.pop(LEGACY_PRETRAINED_KEY, True)  # where a version-1 spec kept it
    pretrained = spec.get("pretrained", legacy)
    for key, value in sorted(protocol.items()):
        if key not in base_protocol or base_protocol[key] != value:
            argv += ["--protocol", f"{key}={cli_value(value)}"]
    if not pretrained:
        argv.append("--random-init")
    fgsm = (spec.get("measure") or {}).get("fgsm")
    if not fgsm:
        argv.append("--no-fgsm")
    else:
        eps = fgsm.get("epsilons") or []
        argv += ["--fgsm-eps", ",".join(eps_text(float(e)) for e in eps)]
        if fgsm.get("max_examples") is not None:
            argv += ["--fgsm-examples", str(fgsm["max_examples"])]
    if (spec.get("measure") or {}).get("test_by_epoch"):
        argv.append("--test-by-epoch")
    return argv
