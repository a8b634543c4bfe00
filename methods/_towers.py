"""Tower selection shared by the PEFT baselines (prefix, BitFit, Adapter, LoRA).

A method's ``tower`` option names the towers it modifies: one name (``image``, ``text``, ``encoder``,
``decoder``), a comma-separated list, or ``both``/``all`` for every tower the backbone has (image and
text on CLIP, encoder and decoder on an encoder-decoder). Unknown names are refused when the config is
built; a name the backbone lacks is refused when the method is attached.
"""

from __future__ import annotations

from typing import ClassVar

from petlbench.backbones.base import Backbone
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from .base import Method

TOWER_NAMES = ("image", "text", "encoder", "decoder")
EVERY = ("both", "all")
ENCODER_DECODER_KINDS = ("ofa",)


def tower_defaults(kind: str) -> dict[str, str]:
    """An encoder-decoder has no ``image`` tower: there the baselines modify both towers by default,
    as OFA's prompt-tuning, adapter and BitFit baselines do."""
    return {"tower": "both"} if kind in ENCODER_DECODER_KINDS else {}


def parse_towers(method: str, spec: str) -> tuple[str, ...]:
    """The tower names in ``spec`` (empty tuple for ``both``/``all``: every tower of the backbone)."""
    value = spec.strip().lower()
    if value in EVERY:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    bad = [n for n in names if n not in TOWER_NAMES]
    if not names or bad:
        raise UserError(
            f"{method}: tower must be one of {', '.join(TOWER_NAMES)}, a comma-separated list of them, "
            f"or 'both' (every tower of the backbone); got {spec!r}"
        )
    return names


def resolve_towers(method: str, spec: str, backbone: Backbone) -> dict[str, Tower]:
    """The backbone's towers that ``spec`` selects, in the backbone's order."""
    names = parse_towers(method, spec) or backbone.tower_names
    missing = [n for n in names if n not in backbone.towers]
    if missing:
        raise UserError(
            f"{method}: backbone {backbone.name!r} has no {', '.join(missing)} tower "
            f"(it has {', '.join(backbone.tower_names)}); choose tower= among those"
        )
    return {n: backbone.tower(n) for n in backbone.tower_names if n in names}


class TowerChoice(Method):
    """The base of the methods with a ``tower`` option (and usually a branch ``dropout``): LoRA, DoRA,
    VeRA, prefix, Adapter, BitFit, SSF, AdaptFormer, FacT, Convpass. Which towers they need is their
    option, checked when attached (:func:`resolve_towers`), not a class attribute; the option and the
    dropout are checked once here, before anything is built. Subclasses add their own checks and call
    ``super().validate_config()``. ``towers`` (what pairing reads as the towers the method may
    modify) is every tower the option can name; a subclass narrows it where it works on fewer."""

    towers: ClassVar[tuple[str, ...]] = TOWER_NAMES

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ()

    def validate_config(self) -> None:
        c = self.config
        dropout = getattr(c, "dropout", None)
        if isinstance(dropout, float) and not 0.0 <= dropout < 1.0:
            raise UserError(f"{self.name}: dropout must be in [0, 1), got {dropout}")
        parse_towers(self.name, c.tower)

    def chosen_towers(self, backbone: Backbone) -> dict[str, Tower]:
        """The backbone's towers the ``tower`` option selects, in the backbone's order."""
        return resolve_towers(self.name, self.config.tower, backbone)
