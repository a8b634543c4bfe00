"""Methods whose update can be written into the frozen weights after training (LoRA's ``merge``,
SSF's ``fold``): inference then costs exactly the backbone's.

The shared part: the option that adds a training-free stage doing it after training, the flag in
the method's state (a checkpoint of a folded model reloads folded), reloading with the update taken
out of the weights first, and refusing :meth:`~petlbench.methods.base.Method.detach` while folded
(taking it out again is exact only to float rounding).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from petlbench.errors import UserError

from .base import Stage, StageContext


class FoldsIntoWeights:
    """Mixed into a :class:`~petlbench.methods.base.Method` before its base class. Subclasses name
    the config option asking for the stage (``fold_option``), the stage (``fold_stage``: name and
    description), the flag's key in the state (``fold_key``, also the word in messages), write
    their update into the weights or take it out (``_write_into_weights``) and fill their slots,
    empty while folded (``_bind_slots``)."""

    fold_option: ClassVar[str]
    fold_stage: ClassVar[tuple[str, str]]
    fold_key: ClassVar[str]
    config: Any
    name: ClassVar[str]
    _in_weights: bool = False

    def _write_into_weights(self, undo: bool) -> None:
        raise NotImplementedError

    def _bind_slots(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def _set_in_weights(self, folded: bool) -> None:
        """Write the update into the weights (True) or take it out (False), then refill the slots
        (idempotent)."""
        if self._in_weights == folded:
            return
        self._write_into_weights(undo=not folded)
        self._in_weights = folded
        self._bind_slots()

    def stages(self) -> list[Stage]:
        if not getattr(self.config, self.fold_option):
            return [Stage("train")]

        def fold(ctx: StageContext) -> None:  # noqa: ARG001 - the method holds what it needs
            self._set_in_weights(True)

        name, description = self.fold_stage
        return [Stage("train"), Stage(name, description, train=False, prepare=fold)]

    def method_state(self) -> dict[str, torch.Tensor]:
        state = super().method_state()  # type: ignore[misc]
        state[self.fold_key] = torch.tensor(self._in_weights)
        return state

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        folded = bool(state.pop(self.fold_key, torch.tensor(False)))
        self._set_in_weights(False)  # take the current update out of the weights before replacing it
        self.load_state_dict(state)  # type: ignore[attr-defined]
        self._set_in_weights(folded)

    def detach(self) -> None:
        if self._in_weights:
            raise UserError(
                f"{self.name}: {self.fold_key} into the frozen weights, which detach cannot undo exactly"
            )
        super().detach()  # type: ignore[misc]
