"""`bench pretrain micro-clip|micro-vit`: pretrain the micro backbones on the synthetic world.

Every step draws a fresh batch of scenes from a generator seeded by (seed, step), so a run is fixed
by its seed and needs no dataset. micro-clip learns contrastively from captions (symmetric InfoNCE,
learnable temperature); micro-vit learns supervised, one linear head per scene attribute (shape,
colour, count, size, quadrant; an attribute that does not apply to a scene is ignored). Training
runs through the same wrapped forward the benchmark uses (normalisation included). The result is
``<out>/<name>.safetensors`` plus ``<name>.json`` with config, sha256, provenance and metrics.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import micro
from petlbench.backbones.base import Backbone
from petlbench.backbones.clip import ClipBackbone
from petlbench.benchmarks.datasets.synthetic import COUNTS, POSITIONS, SHAPES
from petlbench.benchmarks.synthetic import world
from petlbench.errors import UserError

from .data import to_pixels
from .provenance import collect_provenance

MODELS = ("micro-clip", "micro-vit")
DEFAULT_STEPS = {"micro-clip": 1200, "micro-vit": 800}
ATTRIBUTES = {
    "shape": len(SHAPES),
    "color": len(world.ALL_COLORS),
    "count": len(COUNTS),
    "size": len(world.SIZES),
    "position": len(POSITIONS),
}


def _batch(seed: int, step: int, batch_size: int) -> tuple[world.Scenes, torch.Tensor, np.random.Generator]:
    rng = np.random.default_rng([seed, step])
    scenes = world.sample_scenes(rng, batch_size)
    images = torch.from_numpy(world.render_scenes(scenes, 32, rng))
    return scenes, images, rng


def _normalize(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    pixels = to_pixels(images, torch.device("cpu"))
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _zero_shot(backbone: ClipBackbone, seed: int) -> dict[str, float]:
    """Zero-shot accuracy (percent) per attribute on 512 fresh in-distribution scenes."""
    from petlbench.benchmarks.synthetic.tasks import TASKS, make_task_split

    out = {}
    with torch.no_grad():
        for name in ("world-colors", "world-shapes", "world-count", "world-position", "world-size"):
            task = TASKS[name]
            images, labels = make_task_split(name, 512, seed=10_000 + seed, split="eval")
            feats = F.normalize(backbone.encode_image(_normalize(backbone, torch.from_numpy(images))), dim=-1)
            prompts = [task.templates[0].format(c) for c in task.class_names]
            text = F.normalize(backbone.encode_text(backbone.tokenize(prompts)), dim=-1)
            preds = (feats @ text.T).argmax(1)
            out[name] = 100.0 * float((preds == torch.from_numpy(labels)).float().mean())
    return out


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )


def check_pretrain_args(
    name: str, out_dir: Path, *, steps: int, batch_size: int, lr: float, seed: int
) -> None:
    """Refuse what could only fail later (or train nothing): one line each, before any step."""
    from .plan import check_seed

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"bench pretrain: --steps must be a positive integer, got {steps!r}")
    least = 2 if name == "micro-clip" else 1  # the contrastive loss needs a negative in the batch
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < least:
        raise UserError(f"bench pretrain: --batch-size must be at least {least} for {name}, got {batch_size}")
    if not math.isfinite(lr) or lr <= 0:
        raise UserError(f"bench pretrain: --lr must be a positive number, got {lr}")
    check_seed(seed, "bench pretrain: --seed")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"bench pretrain: --out {out_dir} is a file; give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"bench pretrain: cannot create --out {out_dir}: {err.strerror or err}") from None


def pretrain(
    name: str,
    out_dir: Path,
    *,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    if name not in MODELS:
        raise UserError(f"bench pretrain: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    steps = DEFAULT_STEPS[name] if steps is None else steps
    check_pretrain_args(name, out_dir, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    torch.manual_seed(seed)
    if name == "micro-clip":
        raw: nn.Module = micro.micro_clip_model(seed, world.vocabulary())
        backbone: Backbone = micro.wrap_micro_clip(name, raw, {"arch": name}, world.vocabulary())
        head = None
    else:
        raw = micro.micro_vit_model(seed=seed)
        backbone = micro.wrap_micro_vit(name, raw, {"arch": name})
        head = nn.Linear(backbone.feature_dim, sum(ATTRIBUTES.values()))
    for p in raw.parameters():
        p.requires_grad_(True)
    trainable = nn.ModuleList([raw] + ([head] if head is not None else []))
    optimizer = _optimizer(trainable, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, steps // 20))
    tokenizer = micro.micro_tokenizer(world.vocabulary())
    losses: list[float] = []
    provenance = collect_provenance()  # the code as it was when training started
    started = time.perf_counter()
    for step in range(steps):
        scenes, images, rng = _batch(seed, step, batch_size)
        pixels = _normalize(backbone, images)
        if name == "micro-clip":
            img = F.normalize(backbone.encode_image(pixels), dim=-1)
            clip = cast(ClipBackbone, backbone)
            txt = F.normalize(clip.encode_text(tokenizer(world.captions(scenes, rng))), dim=-1)
            logits = cast(torch.Tensor, raw.logit_scale).exp().clamp(max=100) * img @ txt.T
            target = torch.arange(batch_size)
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        else:
            assert head is not None
            logits = head(backbone.encode_image(pixels))
            targets = {
                "shape": scenes.shape,
                "color": scenes.color,
                "count": scenes.count - 1,
                "size": scenes.size,
                "position": scenes.position,
            }
            loss = torch.zeros(())
            start = 0
            for attr, n in ATTRIBUTES.items():
                y = torch.from_numpy(targets[attr]).long()
                loss = loss + F.cross_entropy(logits[:, start : start + n], y, ignore_index=-1)
                start += n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        optimizer.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    wall = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-50:])),
        "loss_every_100_steps": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, steps, 100)],
    }
    if name == "micro-clip":
        metrics["zero_shot"] = _zero_shot(cast(ClipBackbone, backbone), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    path = out_dir / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in raw.state_dict().items()}
    save_file(state, str(path), metadata={"name": name, "world": world.WORLD_VERSION})
    record = {
        "name": name,
        "world": world.WORLD_VERSION,
        "sha256": micro.file_sha256(path),
        "config": micro.MICRO_CLIP if name == "micro-clip" else micro.MICRO_VIT,
        "parameters": sum(p.numel() for p in raw.parameters()),
        "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "wall_time_s": wall},
        "metrics": metrics,
        "provenance": provenance,
    }
    if name == "micro-clip":
        record["vocabulary"] = world.vocabulary()  # the tokenizer is part of the model
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
