"""A method's stages, in order, for any objective (E²VPT: train, prune, rewind; Tip-Adapter: build
its cache, search alpha/beta; most methods: one training stage).

A finished stage leaves its state on disk, so a crash resumes in the stage it was in; within a stage
the trainer resumes from its last epoch. Each training stage's seed is the run's seed shifted by the
stage's index, so the stages draw different batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petlbench.benchmarks.suites import Protocol
from petlbench.methods.base import Method, StageContext

from .checkpoint import CheckpointError, load_state, save_state
from .trainer import TrainConfig, Trainer, TrainResult

Evaluate = Callable[[], dict[str, float]]
Batches = Callable[[], Iterator[Any]]


@dataclass
class StageRun:
    """What the stage loop needs of one run: its identity, protocol and where it checkpoints."""

    run_id: str
    seed: int
    protocol: Protocol
    device: torch.device
    run_dir: Path | None = None  # per-run checkpoint folder; None keeps nothing on disk
    on_step: Callable[[int, int, float], None] | None = None


def _read_stage(path: Path, device: torch.device) -> dict[str, Any] | None:
    """A finished stage's saved state, or None (and the file dropped) when it cannot be read."""
    try:
        return load_state(path, device)
    except CheckpointError as err:
        warnings.warn(f"{err}; discarded, re-running that stage", stacklevel=2)
        path.unlink(missing_ok=True)
        return None


def train_config(protocol: Protocol, epochs: int | None, seed: int) -> TrainConfig:
    """A stage's training configuration: the protocol's, with the stage's own epochs where it sets them."""
    return TrainConfig(
        epochs=epochs or protocol.epochs,
        batch_size=protocol.batch_size,
        optimizer=protocol.optimizer,
        lr=protocol.lr,
        weight_decay=protocol.weight_decay,
        momentum=protocol.momentum,
        warmup_epochs=protocol.warmup_epochs,
        grad_clip=protocol.grad_clip,
        seed=seed,
        schedule=protocol.schedule,
        warmup_lr=protocol.warmup_lr,
    )


def train_stages(
    run: StageRun,
    model: nn.Module,
    method: Method,
    head: nn.Module | None,
    fit: Callable[[Trainer, Evaluate], TrainResult],
    evaluate: Evaluate,
    *,
    train_examples: int,
    batches: Batches,
    selection_batches: Batches | None = None,
    feature_cache: bool = False,
    observe: Evaluate | None = None,
) -> dict[str, Any]:
    """Run the method's stages; returns the record's ``history``, ``stages`` and ``train`` blocks.

    ``fit(trainer, evaluate)`` trains one stage with the objective's loss; ``evaluate`` gives the
    selection metric (after every epoch and after every stage); ``batches`` / ``selection_batches``
    are one pass over the training / selection split for a stage's ``prepare`` hook. ``observe``
    gives scores recorded in each epoch's history entry and nowhere else: no stage result, no
    ``prepare`` hook and no selection reads them (the per-epoch test score of ``--test-by-epoch``)."""
    device = run.device
    stage_results: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    train_info: dict[str, Any] = {
        "train_examples": train_examples,
        "device": str(device),
        "feature_cache": feature_cache,
        "train_time_s": 0.0,
        "images": 0,
        "resumed_from_epoch": None,
        "resumed_after_stages": [],  # finished stages read back from disk (a run that resumed)
    }
    for index, stage in enumerate(method.stages()):
        done = (
            run.run_dir / f"stage{index}-{stage.name}.done.safetensors" if run.run_dir is not None else None
        )
        state = _read_stage(done, device) if done is not None and done.exists() else None
        if state is not None:
            method.load_method_state(state["method"])
            if head is not None:
                head.load_state_dict(state["head"])
            stage_results[stage.name] = state["result"]
            history.extend(state["history"])
            train_info["resumed_after_stages"].append(stage.name)
            continue
        if stage.prepare is not None:
            stage.prepare(
                StageContext(model, method, device, run.seed, batches, dict(stage_results), selection_batches)
            )
        stage_history: list[dict[str, Any]] = []
        if stage.train:
            trainer = Trainer(
                model,
                method,
                train_config(run.protocol, stage.epochs, run.seed + 7919 * index),
                head=head,
                device=device,
                checkpoint_path=run.run_dir / f"stage{index}-{stage.name}.safetensors"
                if run.run_dir is not None
                else None,
                callbacks=method.callbacks(),
                progress=run.on_step,
            )
            per_epoch = evaluate if observe is None else (lambda: {**evaluate(), **observe()})
            trained = fit(trainer, per_epoch)
            stage_history = [{"stage": stage.name, **h} for h in trained.history]
            train_info["train_time_s"] += trained.train_time_s
            train_info["images"] += trained.train_images
            if trained.resumed_from_epoch is not None:
                train_info["resumed_from_epoch"] = {"stage": stage.name, "epoch": trained.resumed_from_epoch}
        stage_result = {
            "stage": stage.name,
            **evaluate(),
            "trainable_parameters": method.num_trainable_parameters(),
        }
        stage_results[stage.name] = stage_result
        history.extend(stage_history)
        if done is not None:
            save_state(
                done,
                {
                    "method": method.method_state(),
                    "head": head.state_dict() if head is not None else {},
                    "result": stage_result,
                    "history": stage_history,
                },
            )
    train_info["images_per_second"] = (
        train_info["images"] / train_info["train_time_s"] if train_info["train_time_s"] > 0 else None
    )
    train_info["epochs"] = sum(1 for h in history if "epoch" in h)
    train_info["seconds_per_epoch"] = (
        train_info["train_time_s"] / train_info["epochs"] if train_info["epochs"] else None
    )
    return {"history": history, "stages": list(stage_results.values()), "train": train_info}
