"""Checkpoints without pickle: tensors in a safetensors file, everything else as JSON in its header.

A training checkpoint holds nested state (method and head tensors, optimizer state with integer
keys, callback state, history). :func:`save_state` writes the tensors under path-like keys and the
structure as JSON (dict keys keep their type), atomically; :func:`load_state` rebuilds it. Nothing
is ever unpickled, so a planted or corrupt file can at worst be refused: :class:`CheckpointError`,
and the caller restarts from the last good state. A finished run's artifact (its trained method and
head, for re-measuring) is a plain safetensors file: :func:`save_artifact`, :func:`load_artifact`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from petlbench.methods.base import Method

    from .spec import RunSpec

FORMAT = "petlbench-checkpoint-1"


class CheckpointError(Exception):
    """A checkpoint that cannot be read as one of ours (truncated, corrupt, foreign)."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise TypeError(f"checkpoint dict key {k!r} is not a str/int/float/bool")
            items.append([k, _encode(v, tensors)])
        return {"__dict__": items}
    if isinstance(obj, list | tuple):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_state(path: Path, state: Any) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the old file or the new one)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    os.replace(tmp, path)


def load_state(path: Path, device: torch.device | str = "cpu") -> Any:
    """Read a checkpoint written by :func:`save_state`; anything else raises CheckpointError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a petlbench checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        return _decode(json.loads(meta["state"]), tensors)
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises several types for a bad header or short file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None


def save_artifact(path: Path, method: Method, head: nn.Module | None, spec: RunSpec) -> None:
    """A finished run's trained state (the method's, and the head's where the model has one) as
    safetensors, so a stored run can be re-measured later; the spec rides along in the metadata."""
    from safetensors.torch import save_file

    tensors = {f"method.{k}": v.contiguous().cpu() for k, v in method.method_state().items()}
    if head is not None:
        tensors.update({f"head.{k}": v.detach().contiguous().cpu() for k, v in head.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"run_id": spec.run_id, "spec": spec.canonical_json()})
    tmp.replace(path)


def load_artifact(path: Path, method: Method, head: nn.Module | None, device: torch.device) -> None:
    """Load what :func:`save_artifact` wrote into a freshly built model of the same spec."""
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=str(device))
    method.load_method_state({k[7:]: v for k, v in tensors.items() if k.startswith("method.")})
    if head is not None:
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
