"""The released OFA checkpoint layout (OFA-Sys/OFA ``feature/add_transformers``) and its loader.

Released keys are ``encoder.*`` / ``decoder.*`` as in ``OFAModel``; ours are the backbone's
``towers.encoder.*`` / ``towers.decoder.*`` with the same names below, except:

* self-attention: released ``self_attn.{q,k,v}_proj.{weight,bias}`` -> our fused
  ``self_attn.in_proj_{weight,bias}`` (rows q, k, v), which ``slot_attention`` reads;
* the one shared token embedding: released ``encoder.embed_tokens.weight``,
  ``decoder.embed_tokens.weight`` and ``decoder.output_projection.weight`` (tied copies) -> ours;
* derived index buffers the released model stores (``*.token_rp_bucket``, ``*.image_rp_bucket``,
  ``decoder.image_position_idx``) are recomputed here; when present they are checked against ours.

:func:`load_ofa_checkpoint` is strict: every parameter and buffer of ours must come from the
checkpoint (BatchNorm's ``num_batches_tracked`` may be absent: it has no effect in eval mode) and
every checkpoint key must be used, else one :class:`UserError` lists what is missing/unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from petlbench.errors import UserError

from .config import OFAConfig
from .positions import decoder_image_position_index, full_image_bucket_table, text_buckets

if TYPE_CHECKING:
    from .backbone import OFABackbone

TIED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
_IN_PROJ = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")


def derived_buffers(cfg: OFAConfig) -> dict[str, torch.Tensor]:
    """The index buffers the released model stores, computed from ``cfg``."""
    tokens = text_buckets(cfg.max_positions, cfg.token_bucket_size, cfg.max_positions)
    image = full_image_bucket_table(cfg.image_bucket_size)
    return {
        "encoder.token_rp_bucket": tokens,
        "encoder.image_rp_bucket": image,
        "decoder.token_rp_bucket": tokens,
        "decoder.image_rp_bucket": image,
        "decoder.image_position_idx": decoder_image_position_index(
            cfg.image_bucket_size, cfg.code_image_size
        ),
    }


def released_names(our_key: str) -> tuple[str, ...]:
    """The released key(s) an entry of our backbone's state dict comes from."""
    if not our_key.startswith("towers."):
        raise KeyError(f"not an OFA tower key: {our_key!r}")
    key = our_key.removeprefix("towers.")
    if key.endswith(".embed_tokens.weight"):
        return TIED_KEYS
    m = _IN_PROJ.match(key)
    if m:
        stack, layer, kind = m.groups()
        return tuple(f"{stack}.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv")
    return (key,)


@dataclass
class LoadReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs ours"
    tolerated: list[str] = field(default_factory=list)  # absent but harmless (num_batches_tracked)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {'; '.join(self.mismatched[:4])}")
        return "; ".join(parts) or f"all {self.loaded} tensors loaded"


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("model.") for k in state):
        return {k.removeprefix("model."): v for k, v in state.items()}
    return dict(state)


def map_released_state(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], cfg: OFAConfig
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Released tensors renamed (and q/k/v fused) onto the keys of ``own`` (our state dict)."""
    state = _strip_prefix(state)
    report = LoadReport()
    used: set[str] = set()
    mapped: dict[str, torch.Tensor] = {}
    for key, ref in own.items():
        names = released_names(key)
        if names == TIED_KEYS:
            present = [n for n in names if n in state]
            used.update(present)
            tensor = state[present[0]] if present else None
        elif len(names) == 3:
            used.update(n for n in names if n in state)
            parts = [state.get(n) for n in names]
            complete = all(p is not None for p in parts)
            tensor = torch.cat(cast(list[torch.Tensor], parts), dim=0) if complete else None
            if tensor is None:
                report.missing.extend(n for n, p in zip(names, parts, strict=True) if p is None)
                continue
        else:
            tensor = state.get(names[0])
            if tensor is not None:
                used.add(names[0])
        if tensor is None:
            if key.endswith("num_batches_tracked"):
                report.tolerated.append(names[0])
                mapped[key] = torch.zeros(
                    (), dtype=torch.long, device=ref.device if ref.device.type != "meta" else None
                )
                continue
            report.missing.append(names[0] if len(names) == 1 else f"{names[0]} (or its tied copies)")
            continue
        if tuple(tensor.shape) != tuple(ref.shape):
            report.mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs ours {tuple(ref.shape)}")
            continue
        if tensor.is_floating_point() and tensor.dtype != ref.dtype:
            tensor = tensor.to(ref.dtype)
        mapped[key] = tensor
    derived = derived_buffers(cfg)
    for name, value in derived.items():
        if name in state:
            used.add(name)
            stored = state[name]
            if tuple(stored.shape) != tuple(value.shape):
                report.mismatched.append(
                    f"{name}: checkpoint {tuple(stored.shape)} vs ours {tuple(value.shape)}"
                )
            elif stored.device.type != "meta" and not torch.equal(stored.to(value.dtype), value):
                report.mismatched.append(f"{name}: stored indices differ from the recomputed ones")
    report.unexpected = sorted(k for k in state if k not in used)
    report.loaded = len(mapped)
    return mapped, report


def load_ofa_checkpoint(
    backbone: OFABackbone, state: Mapping[str, torch.Tensor], *, strict: bool = True, assign: bool = False
) -> LoadReport:
    """Load a released-layout state dict into an :class:`~.backbone.OFABackbone`; strict by default.

    ``assign=True`` adopts the checkpoint's tensors (a backbone built on the meta device allocates
    nothing twice). Returns the report; raises ``UserError`` with the report when strict and any key
    is missing, unexpected or of the wrong shape.
    """
    cfg = backbone.ofa_config
    mapped, report = map_released_state(state, backbone.state_dict(), cfg)
    if strict and not report.ok:
        raise UserError(f"OFA checkpoint does not match {backbone.name}: {report.summary()}")
    backbone.load_state_dict(mapped, strict=strict, assign=assign)
    if assign:
        for p in backbone.parameters():
            p.requires_grad_(False)
    return report


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of a released folder (``model.safetensors`` or ``pytorch_model.bin``)."""
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True, mmap=True)
    raise UserError(f"{folder} holds no model.safetensors or pytorch_model.bin")
