"""`bench perf`: training-step throughput of a method on a backbone's real architecture (random
weights), and the FLOP/s it achieves against a matmul roofline measured in the same process.

Convention: a training step costs 3x the forward FLOPs (forward + backward through activations and
weights), with forward FLOPs = 2 x the fvcore MACs of harness/flops.py. Frozen backbone weights need
no weight gradients, so for parameter-efficient methods 3x is an upper bound and the reported
utilisation is optimistic by at most 1.5x; it is the same convention for every method, which is
what a comparison needs.

Speed as a property of the method is the **ratio** to the plain backbone, measured in the same
process with the two train steps interleaved (round by round, so load on a shared machine hits both
alike): the plain step is the frozen backbone with a trainable linear head (a linear probe), the
cheapest training any method adds to. ``x plain`` is the median step-time ratio; ``per MAC`` divides
it by the forward-MAC ratio (1.0: the method costs exactly its extra MACs). Absolute figures are
reported with the hardware they were measured on.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.registry import build_backbone
from petlbench.errors import UserError

from .flops import image_gmacs
from .memory import PeakMemory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roofline(device: torch.device, repeats: int = 5) -> dict[str, Any]:
    """Best-of-``repeats`` FLOP/s of a square matmul in the dtype the trainer computes in."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"matmul_size": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 2 * n**3 / best}


CPU_DEFAULTS = {"batch_size": 8, "steps": 5}  # a ViT-B/16 step on CPU takes seconds: keep it short
DEVICE_DEFAULTS = {"batch_size": 32, "steps": 10}


def perf_defaults(device: torch.device) -> dict[str, int]:
    """Batch size and timed steps that finish in about a minute on the device's kind."""
    return dict(CPU_DEFAULTS if device.type == "cpu" else DEVICE_DEFAULTS)


def hardware_label(device: torch.device) -> str:
    """What the absolute figures were measured on: the accelerator's name, else the CPU and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .provenance import cpu_details

    cpu = cpu_details().get("model") or platform.processor() or platform.machine()
    return f"{cpu} ({torch.get_num_threads()} threads)"


def _train_step(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    pixels: torch.Tensor,
    labels: torch.Tensor,
    amp: bool,
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    kind = pixels.device.type

    def step() -> None:
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(pixels).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def measure_perf(
    method_name: str,
    backbone_name: str,
    *,
    method_config: dict[str, Any] | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    warmup: int = 2,
    num_classes: int = 100,
    device: torch.device,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` train steps of the method, interleaved with ``steps`` plain-backbone steps,
    then eval forwards; ``on_step(done, total)`` reports progress. None: :func:`perf_defaults`."""
    from .objectives.classification import build_classifier

    defaults = perf_defaults(device)
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    steps = defaults["steps"] if steps is None else steps
    if steps < 1 or batch_size < 1:
        raise UserError("bench perf: --steps and --batch-size must be at least 1")
    torch.manual_seed(seed)
    classes = [f"class {i}" for i in range(num_classes)]
    model, method = build_classifier(
        backbone_name,
        method_name,
        method_config or {},
        pretrained=False,
        class_names=classes,
        templates=["a photo of a {}."],
    )
    model.to(device)
    backbone, head = model.backbone, model.head
    plain_backbone = build_backbone(backbone_name, pretrained=False)
    plain_head = torch.nn.Linear(plain_backbone.feature_dim, num_classes)
    plain_gmacs = image_gmacs(plain_backbone)
    plain = ImageClassifier(plain_backbone, plain_head, None).to(device)
    gmacs = image_gmacs(backbone, method)
    params = list(method.trainable_parameters()) + [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise UserError(
            f"bench perf: method {method_name!r} trains nothing; there is no training step to time"
        )
    size = backbone.image_size
    pixels = torch.rand(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    amp = device.type == "cuda"
    step = _train_step(model, params, pixels, labels, amp)
    plain_step = _train_step(plain, list(plain_head.parameters()), pixels, labels, amp)
    total = 2 * (warmup + steps) + steps
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)

    model.train()
    plain.train()
    for _ in range(warmup):
        step()
        tick()
        plain_step()
        tick()
    method_times: list[float] = []
    plain_times: list[float] = []
    with PeakMemory(device) as peak:
        for _ in range(steps):  # interleaved: the same load on both
            method_times.append(_timed(step, device))
            tick()
            plain_times.append(_timed(plain_step, device))
            tick()
    del plain, plain_step
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(pixels)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(pixels)
            tick()
        _sync(device)
        eval_s = time.perf_counter() - t0
    train_s = sum(method_times)
    train_ips = batch_size * steps / train_s
    ratio = statistics.median(method_times) / statistics.median(plain_times)
    roof = matmul_roofline(device)
    achieved = 3 * 2 * gmacs * 1e9 * train_ips
    return {
        "method": method_name,
        "backbone": backbone_name,
        "method_config": method.config_dict(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "hardware": hardware_label(device),
        "dtype": "bfloat16 autocast" if amp else "float32",
        "batch_size": batch_size,
        "steps": steps,
        "image_size": size,
        "trainable_parameters": sum(p.numel() for p in params),
        "forward_gmacs_per_image": gmacs,
        "train_images_per_second": train_ips,
        "train_step_ms": 1000 * train_s / steps,
        "eval_images_per_second": batch_size * steps / eval_s,
        "train_memory": peak.result(),
        "speed_ratio": {
            "x_plain": ratio,
            "per_mac": ratio / (gmacs / plain_gmacs),
            "plain_step_ms": 1000 * statistics.median(plain_times),
            "method_step_ms": 1000 * statistics.median(method_times),
            "plain_forward_gmacs_per_image": plain_gmacs,
            "plain": "frozen backbone + trainable linear head (linear probe), interleaved step by step",
        },
        "achieved_train_flops_per_s": achieved,
        "roofline": roof,
        "utilisation": achieved / roof["flops_per_s"],
        "convention": "train FLOPs = 3 x forward; forward FLOPs = 2 x fvcore MACs",
    }


PERF_FORMAT = "petlbench.perf/1"


def perf_cells(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct (method, method config, backbone) of the finished final runs in ``records``, in
    a fixed order: what a leaderboard's speed column needs one dedicated measurement of."""
    from .spec import canonical_json

    cells: dict[str, dict[str, Any]] = {}
    for r in records:
        spec = r.get("spec") or {}
        if r.get("status", "finished") != "finished" or spec.get("stage", "final") != "final":
            continue
        cell = {
            "method": spec["method"],
            "method_config": spec.get("method_config") or {},
            "backbone": spec["backbone"],
        }
        cells.setdefault(canonical_json(cell), cell)
    return [cells[k] for k in sorted(cells)]


def perf_line(cell: dict[str, Any], device: torch.device, **options: Any) -> dict[str, Any]:
    """One line of a perf file: the cell, its speed ratio to the plain backbone and the absolute step
    times with the hardware; a method that trains nothing gets ``x_plain`` null and the reason."""
    line: dict[str, Any] = {"format": PERF_FORMAT, **cell}
    try:
        perf = measure_perf(
            cell["method"], cell["backbone"], method_config=cell["method_config"], device=device, **options
        )
    except UserError as err:
        return line | {"x_plain": None, "per_mac": None, "hardware": hardware_label(device), "note": str(err)}
    except RuntimeError as err:  # e.g. Tip-Adapter-F: its trainable cache is built from training data
        note = f"not timed on random inputs: {str(err).splitlines()[0]}"
        return line | {"x_plain": None, "per_mac": None, "hardware": hardware_label(device), "note": note}
    ratio = perf["speed_ratio"]
    return line | {
        "x_plain": ratio["x_plain"],
        "per_mac": ratio["per_mac"],
        "method_step_ms": ratio["method_step_ms"],
        "plain_step_ms": ratio["plain_step_ms"],
        "hardware": perf["hardware"],
        "dtype": perf["dtype"],
        "batch_size": perf["batch_size"],
        "steps": perf["steps"],
        "train_memory": perf["train_memory"],
    }
