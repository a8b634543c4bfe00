"""Micro backbones pretrained on the synthetic world and shipped with the package.

``micro-clip`` (open_clip CLIP: 32px images, patch 8, width 128, 4 image + 3 text layers, a word
tokenizer) is trained contrastively on world captions; ``micro-vit`` (timm ViT of the same image
shape) is trained supervised on shape x colour. ``bench pretrain`` (harness/pretrain.py) produces
the weights; each ships as ``weights/<name>.safetensors`` beside ``weights/<name>.json`` (config,
sha256, training provenance and metrics). The hash is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from petlbench.errors import UserError

from .clip import ClipBackbone
from .seeding import seeded
from .vit import TimmViTBackbone
from .word_tokenizer import WordTokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

MICRO_CLIP: dict[str, Any] = {
    "embed_dim": 128,
    "vision": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text": {"context_length": 24, "width": 128, "heads": 4, "layers": 3},
}
MICRO_VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}


def shipped_vocabulary(weights_dir: Path | None = None) -> list[str]:
    """micro-clip's word vocabulary, part of the model like its weights: read from the weights'
    record (written by ``bench pretrain`` from the synthetic world), so the backbone never imports
    the benchmark data (DESIGN section 2: backbones depend on no benchmark)."""
    path = (weights_dir or WEIGHTS_DIR) / "micro-clip.json"
    try:
        words = json.loads(path.read_text())["vocabulary"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{path}: no micro-clip vocabulary ({err}); recreate it with `bench pretrain micro-clip`"
        ) from None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{path}: the vocabulary must be a list of words")
    return words


def micro_clip_model(seed: int = 0, vocabulary: list[str] | None = None) -> torch.nn.Module:
    """The raw open_clip model (trainable), randomly initialised under ``seed``; ``vocabulary``
    defaults to the shipped one."""
    from open_clip.model import CLIP

    tokenizer = micro_tokenizer(vocabulary)
    with seeded(seed):
        return CLIP(
            embed_dim=MICRO_CLIP["embed_dim"],
            vision_cfg=dict(MICRO_CLIP["vision"]),
            text_cfg={**MICRO_CLIP["text"], "vocab_size": tokenizer.vocab_size},
        )


def micro_tokenizer(vocabulary: list[str] | None = None) -> WordTokenizer:
    words = shipped_vocabulary() if vocabulary is None else vocabulary
    return WordTokenizer(words, MICRO_CLIP["text"]["context_length"])


def micro_vit_model(num_classes: int = 0, seed: int = 0) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    with seeded(seed):
        return VisionTransformer(**MICRO_VIT, num_classes=num_classes)


def wrap_micro_clip(
    name: str, model: torch.nn.Module, config: dict[str, Any], vocabulary: list[str] | None = None
) -> ClipBackbone:
    return ClipBackbone(name, model, image_size=32, config=config, tokenizer=micro_tokenizer(vocabulary))


def wrap_micro_vit(name: str, vit: torch.nn.Module, config: dict[str, Any]) -> TimmViTBackbone:
    return TimmViTBackbone(name, vit, config)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(
    name: str, weights_dir: Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The shipped state dict and its record; refuses a file whose hash differs from the record."""
    from safetensors.torch import load_file

    folder = weights_dir or WEIGHTS_DIR
    path, record_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not path.exists() or not record_path.exists():
        raise UserError(
            f"no shipped weights for {name!r} in {folder}; create them with `bench pretrain {name}` "
            "or build the architecture with random weights (--random-init)"
        )
    record = json.loads(record_path.read_text())
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise UserError(f"{path} has sha256 {digest[:12]}..., its record says {record['sha256'][:12]}...")
    return load_file(str(path)), record


def _shipped_weights(arch: str, config: dict[str, Any], load: Callable[[dict], Any] | None) -> dict[str, Any]:
    """``config`` with where the weights came from; ``load`` (None: random init) takes the shipped state."""
    if load is None:
        return {**config, "pretrained": None}
    state, record = load_weights(arch)
    load(state)
    return {
        **config,
        "pretrained": "synthetic world",
        "weights_sha256": record["sha256"],
        "world": record["world"],
    }


def build_micro_clip(name: str, pretrained: bool) -> ClipBackbone:
    model = micro_clip_model()
    config: dict[str, Any] = {"source": "petlbench", "arch": "micro-clip", **MICRO_CLIP, "tokenizer": "words"}
    config = _shipped_weights("micro-clip", config, model.load_state_dict if pretrained else None)
    return wrap_micro_clip(name, model, config)


def build_micro_vit(name: str, pretrained: bool) -> TimmViTBackbone:
    vit = micro_vit_model()

    def load(state: dict) -> None:
        vit.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})

    config = _shipped_weights(
        "micro-vit", {"source": "petlbench", "arch": "micro-vit", **MICRO_VIT}, load if pretrained else None
    )
    return wrap_micro_vit(name, vit, config)
