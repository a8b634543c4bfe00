"""`bench perf`: training-step throughput of a method on a backbone's real architecture (random
weights), and the FLOP/s it achieves against a matmul roofline measured in the same process.

Convention: a training step costs 3x the forward FLOPs (forward + backward through activations and
weights), with forward FLOPs = 2 x the fvcore MACs of harness/flops.py. Frozen backbone weights need
no weight gradients, so for parameter-efficient methods 3x is an upper bound and the reported
utilisation is optimistic by at most 1.5x; it is the same convention for every method, which is
what a comparison needs.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.registry import build_backbone
from petlbench.errors import UserError
from petlbench.methods.registry import get_method

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


def measure_perf(
    method_name: str,
    backbone_name: str,
    *,
    method_config: dict[str, Any] | None = None,
    batch_size: int = 32,
    steps: int = 10,
    warmup: int = 3,
    num_classes: int = 100,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    from .runner import head_for

    if steps < 1 or batch_size < 1:
        raise UserError("bench perf: --steps and --batch-size must be at least 1")
    torch.manual_seed(seed)
    backbone = build_backbone(backbone_name, pretrained=False)
    method_cls = get_method(method_name)
    towers = tuple(backbone.towers)
    method_cls.check_compatible(backbone_name, backbone.kind, towers)
    method = method_cls(method_config or {})
    method.attach(backbone)
    head = head_for(method, backbone, [f"class {i}" for i in range(num_classes)], ["a photo of a {}."])
    model = ImageClassifier(backbone, head, method).to(device)
    gmacs = image_gmacs(backbone, method)
    params = list(method.trainable_parameters()) + [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise UserError(
            f"bench perf: method {method_name!r} trains nothing; there is no training step to time"
        )
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    size = backbone.image_size
    pixels = torch.rand(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(pixels).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(warmup):
        step()
    with PeakMemory(device) as peak:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(pixels)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(pixels)
        _sync(device)
        eval_s = time.perf_counter() - t0
    train_ips = batch_size * steps / train_s
    roof = matmul_roofline(device)
    achieved = 3 * 2 * gmacs * 1e9 * train_ips
    return {
        "method": method_name,
        "backbone": backbone_name,
        "method_config": method.config_dict(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
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
        "achieved_train_flops_per_s": achieved,
        "roofline": roof,
        "utilisation": achieved / roof["flops_per_s"],
        "convention": "train FLOPs = 3 x forward; forward FLOPs = 2 x fvcore MACs",
    }
