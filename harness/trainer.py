"""The training loop shared by every objective: SGD/AdamW, the protocol's learning-rate schedule (per
step or per epoch, as each reference steps it), AMP on GPU, clipping, callbacks, and a per-epoch
checkpoint of the trainable state only, so a killed run resumes where it died.

The loop trains a task model: the method's parameters and, where the task model has one, its head.
What a batch's loss is belongs to the objective (``harness/objectives/``): cross-entropy over
class logits, or a sequence loss over target tokens.

Resume is exact: each epoch's shuffling, dropout and data randomness (augmentation) draw from
generators seeded by (seed, epoch), so an epoch replayed after a crash sees the same batches, crops
and noise as the uninterrupted run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petlbench.methods.base import Callback, Method

from .checkpoint import CheckpointError, load_state, save_state


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    schedule: str = "linear_warmup_cosine_step"  # petlbench.benchmarks.suites.SCHEDULES
    warmup_lr: float = 1e-5


@dataclass
class TrainContext:
    """What callbacks see."""

    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0  # global optimisation step, counted from 0
    steps_per_epoch: int = 0
    loss: float = float("nan")
    epochs: int = 0  # the stage's epochs (PromptSRC's Gaussian weights over epochs need the total)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    train_images: int = 0
    resumed_from_epoch: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_time_s if self.train_time_s > 0 else float("nan")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr: linear warmup from 0, then a half cosine to 0 (per step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_lr_factor(schedule: str, epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr during ``epoch`` for the schedules the references step once per
    epoch (their formulas: petlbench.benchmarks.suites.SCHEDULES)."""
    warmup, epochs = int(cfg.warmup_epochs), cfg.epochs
    if schedule == "dassl_constant_warmup_cosine_epoch":
        # Dassl ConstantWarmupScheduler: epochs < WARMUP_EPOCH at WARMUP_CONS_LR, then its successor
        # CosineAnnealingLR(T_max=MAX_EPOCH) restarted at 0 (WARMUP_RECOUNT=True), so the last epoch
        # does not reach 0 (KaiyangZhou/Dassl.pytorch dassl/optim/lr_scheduler.py:L35-54, L128-141).
        if epoch < warmup:
            return cfg.warmup_lr / cfg.lr
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / epochs))
    if schedule == "vpt_linear_warmup_cosine_epoch":
        # KMnP/vpt WarmupCosineSchedule.lr_lambda(epoch) (src/solver/lr_scheduler.py:L56-65): 0 at
        # epoch 0, e/W during warm-up, then a half cosine over the remaining epochs.
        if epoch < warmup:
            return epoch / max(1.0, warmup)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown per-epoch schedule {schedule!r}")


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The LambdaLR multiplier of step ``s`` (counted from 0) for ``cfg.schedule``; per-epoch schedules
    hold one value for every step of an epoch."""
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.schedule == "linear_warmup_cosine_step":
        warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        return lambda s: warmup_cosine(s, warmup_steps, total_steps)
    if cfg.schedule in ("dassl_constant_warmup_cosine_epoch", "vpt_linear_warmup_cosine_epoch"):
        return lambda s: epoch_lr_factor(cfg.schedule, s // max(1, steps_per_epoch), cfg)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")


_DATA_SALT = 0x5EED_A06  # data randomness draws from its own stream, independent of the batch order


def dtype_name(device: torch.device) -> str:
    """How the trainer and evaluators compute (they autocast to bf16 on CUDA only)."""
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class Trainer:
    """Trains ``method``'s parameters and the trainable parameters of ``head`` (a classification
    head; None for a task model without one) inside ``model``, with a loss the objective gives."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        cfg: TrainConfig,
        *,
        head: nn.Module | None = None,
        device: torch.device,
        checkpoint_path: Path | None = None,
        callbacks: list[Callback] | None = None,
        progress: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.method = method
        self.head = head
        self.cfg = cfg
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.callbacks = list(callbacks or [])
        self.progress = progress
        self.params = list(method.trainable_parameters()) + [
            p for p in (head.parameters() if head is not None else ()) if p.requires_grad
        ]
        self.amp = device.type == "cuda"
        # Data randomness of the current epoch (augmentation): reseeded by (seed, epoch) at its start.
        self.data_generator = torch.Generator()
        self.epoch = 0  # where the loop is (a loss's LossContext reads them)
        self.step = 0

    # ----- checkpoint ---------------------------------------------------------------------------
    def _save(self, epoch: int, ctx: TrainContext, sched: Any, result: TrainResult) -> None:
        if self.checkpoint_path is None:
            return
        state = {
            "epoch": epoch,
            "step": ctx.step,
            "method": self.method.method_state(),
            "head": _head_state(self.head),
            "optimizer": ctx.optimizer.state_dict(),
            "scheduler": sched.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "history": result.history,
            "train_time_s": result.train_time_s,
            "train_images": result.train_images,
        }
        save_state(self.checkpoint_path, state)  # atomic: a kill leaves the old or the new file, never half

    def _load(self, ctx: TrainContext, sched: Any, result: TrainResult) -> int:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return 0
        try:
            state = load_state(self.checkpoint_path, self.device)
        except CheckpointError as err:
            # Never unpickled, never trusted: a truncated or foreign file means starting this stage over.
            warnings.warn(f"{err}; discarded, training this stage from its start", stacklevel=2)
            self.checkpoint_path.unlink(missing_ok=True)
            return 0
        self.method.load_method_state(state["method"])
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        for cb, cb_state in zip(self.callbacks, state["callbacks"], strict=True):
            cb.load_state_dict(cb_state)
        ctx.step = state["step"]
        result.history = state["history"]
        result.train_time_s = state["train_time_s"]
        result.train_images = state["train_images"]
        result.resumed_from_epoch = state["epoch"] + 1
        return state["epoch"] + 1

    # ----- loop ---------------------------------------------------------------------------------
    def fit(
        self,
        n: int,
        batch_loss: Callable[[torch.Tensor], torch.Tensor],
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> TrainResult:
        """Train on ``n`` examples: ``batch_loss(indices)`` gives the loss of a batch of them (run
        under autocast). Shuffling, schedule, clipping, callbacks, per-epoch checkpoints and resume
        are the same for every objective; ``evaluate`` (the selection metric) runs after each epoch."""
        cfg = self.cfg
        if n == 0:
            raise ValueError("empty training set")
        batch = min(cfg.batch_size, n)
        steps_per_epoch = n // batch  # drop_last: every step sees a full batch (as Dassl when n >= batch)
        total_steps = steps_per_epoch * cfg.epochs
        self.model.to(self.device)  # before the optimizer, so restored optimizer state lands on device
        optimizer = build_optimizer(self.params, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
        ctx = TrainContext(
            self.model, self.method, optimizer, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs
        )
        result = TrainResult()
        start_epoch = self._load(ctx, sched, result)
        for cb in self.callbacks:
            cb.on_train_start(ctx)

        for epoch in range(start_epoch, cfg.epochs):
            ctx.epoch = epoch
            torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout noise of this epoch
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            order = torch.randperm(n, generator=gen)
            self.data_generator.manual_seed(_epoch_seed(cfg.seed, epoch) ^ _DATA_SALT)
            epoch_lr = optimizer.param_groups[0]["lr"]
            self.model.train()
            t0 = time.perf_counter()
            loss_sum = 0.0
            for i in range(steps_per_epoch):
                idx = order[i * batch : (i + 1) * batch]
                self.epoch, self.step = epoch, ctx.step
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss = batch_loss(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ctx.loss = float(loss.detach())
                for cb in self.callbacks:
                    cb.after_backward(ctx)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                optimizer.step()
                sched.step()
                ctx.step += 1
                loss_sum += ctx.loss
                for cb in self.callbacks:
                    cb.on_step_end(ctx)
                if self.progress is not None:
                    self.progress(ctx.step, total_steps, ctx.loss)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            result.train_time_s += time.perf_counter() - t0
            result.train_images += steps_per_epoch * batch
            for cb in self.callbacks:
                cb.on_epoch_end(ctx)
            entry = {
                "epoch": epoch,
                "loss": loss_sum / max(1, steps_per_epoch),
                "lr": epoch_lr,
            }
            if evaluate is not None:
                entry.update(evaluate())
            result.history.append(entry)
            self._save(epoch, ctx, sched, result)
        return result


def _head_state(head: nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if head is None else {k: v.detach().clone() for k, v in head.state_dict().items()}
